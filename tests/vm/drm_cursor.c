/* A guest program for tests/vm/test_served_gpu_real.py: sets a 64x64 hardware cursor through the DRM legacy
 * cursor ioctls on /dev/dri/card0 (becoming DRM master), prints "cursor ok", and waits (the cursor stays while
 * the program holds the device). No libc: raw x86-64 syscalls, so the static binary is a few KiB and can be typed
 * into the guest over its serial console. ioctl numbers and structs are the Linux uapi ones (drm.h, drm_mode.h).
 *
 * Built by the test: gcc -Os -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie -s
 */
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;

#define CURSOR_X 300
#define CURSOR_Y 200
#define HOT_X 6
#define HOT_Y 10

static long sys(long n, long a, long b, long c, long d, long e, long f) {
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

void *memset(void *d, int c, unsigned long n) {  /* the compiler may emit calls to it */
    unsigned char *p = d;
    while (n--) *p++ = (unsigned char)c;
    return d;
}

#define IOWR(nr, size) ((3UL << 30) | ((unsigned long)(size) << 16) | (0x64UL << 8) | (nr))

struct card_res { u64 fb, crtc, conn, enc; u32 nfb, ncrtc, nconn, nenc, minw, maxw, minh, maxh; };
struct create_dumb { u32 height, width, bpp, flags, handle, pitch; u64 size; };
struct map_dumb { u32 handle, pad; u64 offset; };
struct cursor2 { u32 flags, crtc; s32 x, y; u32 width, height, handle; s32 hot_x, hot_y; };

static void say(const char *s) {
    long n = 0;
    while (s[n]) n++;
    sys(1, 1, (long)s, n, 0, 0, 0);
}

static int fail(const char *what, long err) {
    char buf[16];
    int i = 15;
    buf[i] = 0;
    err = -err;
    do { buf[--i] = (char)('0' + err % 10); err /= 10; } while (err && i > 0);
    say("cursor failed: ");
    say(what);
    say(" errno ");
    say(buf + i);
    say("\n");
    return 1;
}

int cmain(void) {
    long fd = sys(2, (long)"/dev/dri/card0", 2 /* O_RDWR */, 0, 0, 0, 0);
    if (fd < 0) return fail("open", fd);
    u32 crtcs[8];
    struct card_res res = {0};
    long r = sys(16, fd, IOWR(0xA0, sizeof res), (long)&res, 0, 0, 0);
    if (r < 0) return fail("getresources", r);
    if (res.ncrtc < 1 || res.ncrtc > 8) return fail("crtc count", -(long)res.ncrtc);
    struct card_res res2 = {0};
    res2.crtc = (u64)(unsigned long)crtcs;
    res2.ncrtc = res.ncrtc;
    r = sys(16, fd, IOWR(0xA0, sizeof res2), (long)&res2, 0, 0, 0);
    if (r < 0) return fail("getresources 2", r);
    struct create_dumb cd = {64, 64, 32, 0, 0, 0, 0};
    r = sys(16, fd, IOWR(0xB2, sizeof cd), (long)&cd, 0, 0, 0);
    if (r < 0) return fail("create_dumb", r);
    struct map_dumb md = {cd.handle, 0, 0};
    r = sys(16, fd, IOWR(0xB3, sizeof md), (long)&md, 0, 0, 0);
    if (r < 0) return fail("map_dumb", r);
    long p = sys(9, 0, (long)cd.size, 3 /* PROT_READ|WRITE */, 1 /* MAP_SHARED */, fd, (long)md.offset);
    if (p < 0 && p > -4096) return fail("mmap", p);
    for (u32 y = 0; y < 64; y++) {
        u32 *row = (u32 *)(p + (long)y * cd.pitch);
        for (u32 x = 0; x < 64; x++) {
            u32 a = (x < 8 && y < 8) ? 0u : 0xFFu;  /* a transparent corner */
            row[x] = (a << 24) | ((x * 4) << 16) | ((y * 4) << 8) | ((x + y) * 2);
        }
    }
    struct cursor2 c = {1 /* DRM_MODE_CURSOR_BO */, crtcs[0], 0, 0, 64, 64, cd.handle, HOT_X, HOT_Y};
    r = sys(16, fd, IOWR(0xBB, sizeof c), (long)&c, 0, 0, 0);
    if (r < 0) return fail("cursor2", r);
    struct cursor2 m = {2 /* DRM_MODE_CURSOR_MOVE */, crtcs[0], CURSOR_X, CURSOR_Y, 0, 0, 0, 0, 0};
    r = sys(16, fd, IOWR(0xA3, 28), (long)&m, 0, 0, 0);
    if (r < 0) return fail("cursor move", r);
    say("cursor ok\n");
    for (;;) sys(34, 0, 0, 0, 0, 0, 0);  /* pause(): keep the device (and the cursor) until killed */
    return 0;
}

__asm__(".globl _start\n_start:\n xor %rbp, %rbp\n and $-16, %rsp\n call cmain\n mov %eax, %edi\n"
        " mov $60, %eax\n syscall\n");
