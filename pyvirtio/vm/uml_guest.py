"""The User-Mode Linux guest's userland: busybox, ``/init`` and the static helpers, as one initramfs.

Contract. The initramfs is generic: ``/init`` mounts ``proc``, ``sysfs`` and ``devtmpfs``, mounts the host
directory named by ``pyvirtio.run=<dir>`` on the kernel command line through UML's ``hostfs`` at ``/host`` and
runs ``/host/scenario.sh`` (written by the harness for each run), then prints :data:`DONE_MARKER` with the
script's exit status and powers off. What a scenario does is therefore chosen at run time without rebuilding
anything; results come back as files under ``/host`` and lines on the console.

``pvfb`` (C, linked statically with ``gcc -static`` at provision time) is the helper busybox lacks: it reports
the framebuffer's geometry, unblanks and pans ``/dev/fb0`` (what makes the DRM fbdev emulation set the mode),
draws :func:`pattern_pixel` into it through ``mmap`` and keeps it mapped long enough for the deferred-I/O
flush. ``pvfb dirty SEED [HOLD_MS]`` draws the same picture without ``msync`` and returns at once, leaving a child
that keeps ``/dev/fb0`` open for ``HOLD_MS`` (the last close would flush): the kernel's fbdev deferred-I/O work
(``fb_defio``, on the non-freezable system workqueue, 50 ms later for DRM's shmem fbdev) then sends the frame on
its own, e.g. while the guest suspends. :func:`expected_frame` computes the same picture in Python, so a scanout
can be compared pixel-exact.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

#: Printed by ``/init`` before and after the scenario; the harness ends the run on the second one.
INIT_MARKER = "PVUML-INIT"
DONE_MARKER = "PVUML-DONE"
NOHOST_MARKER = "PVUML-NOHOST"
#: Kernel command-line key naming the host directory mounted at ``/host``.
RUN_ARG = "pyvirtio.run"

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /host /tmp
run=$(sed -n 's/.*{RUN_ARG}=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
echo {INIT_MARKER}
if [ -n "$run" ] && mount -t hostfs -o "$run" none /host; then
  cd /host
  sh /host/scenario.sh
  echo "{DONE_MARKER} rc=$?"
else
  echo {NOHOST_MARKER}
  echo "{DONE_MARKER} rc=99"
fi
sync
poweroff -f
"""

#: The framebuffer helper. Pixel (x, y) of seed s is pattern_pixel(x, y, s); see :func:`pattern_pixel`.
PVFB_SOURCE = r"""
#include <fcntl.h>
#include <linux/fb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint32_t pixel(uint32_t x, uint32_t y, uint32_t s) {
    uint32_t r = (x * 3u + s) & 0xffu, g = (y * 5u + s * 7u) & 0xffu, b = (x ^ y ^ s) & 0xffu;
    return (r << 16) | (g << 8) | b;
}

static void nap(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static int open_fb(void) {
    for (int i = 0; i < 200; i++) {
        int fd = open("/dev/fb0", O_RDWR);
        if (fd >= 0)
            return fd;
        nap(50);
    }
    fprintf(stderr, "pvfb: no /dev/fb0\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: pvfb info | draw SEED [HOLD_MS] | loop SEED COUNT | dirty SEED [HOLD_MS]\n");
        return 2;
    }
    int fd = open_fb();
    struct fb_var_screeninfo var;
    struct fb_fix_screeninfo fix;
    if (ioctl(fd, FBIOGET_VSCREENINFO, &var) || ioctl(fd, FBIOGET_FSCREENINFO, &fix)) {
        perror("pvfb: FBIOGET");
        return 3;
    }
    printf("PVFB-INFO %u %u %u %u %u\n", var.xres, var.yres, fix.line_length, var.bits_per_pixel,
           fix.smem_len);
    if (strcmp(argv[1], "info") == 0)
        return 0;
    if (var.bits_per_pixel != 32) {
        fprintf(stderr, "pvfb: %u bits per pixel, want 32\n", var.bits_per_pixel);
        return 4;
    }
    uint32_t seed = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 0) : 0;
    int loop = strcmp(argv[1], "loop") == 0;
    int dirty = strcmp(argv[1], "dirty") == 0;
    long arg3 = argc > 3 ? strtol(argv[3], NULL, 0) : (loop ? 10 : 500);
    int count = loop ? (int)arg3 : 1;
    long hold = loop ? 100 : (dirty && argc <= 3 ? 5000 : arg3);
    ioctl(fd, FBIOBLANK, FB_BLANK_UNBLANK);
    var.xoffset = var.yoffset = 0;
    if (ioctl(fd, FBIOPAN_DISPLAY, &var))
        perror("pvfb: FBIOPAN_DISPLAY");
    uint8_t *fb = mmap(NULL, fix.smem_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (fb == MAP_FAILED) {
        perror("pvfb: mmap");
        return 5;
    }
    for (int k = 0; k < count; k++) {
        uint32_t s = seed + (uint32_t)k;
        for (uint32_t y = 0; y < var.yres; y++) {
            uint32_t *row = (uint32_t *)(fb + (size_t)y * fix.line_length);
            for (uint32_t x = 0; x < var.xres; x++)
                row[x] = pixel(x, y, s);
        }
        if (dirty) {
            /* No msync: the pages stay on the deferred-I/O list and its work flushes them ~50 ms later. The
             * file must stay open meanwhile (the last close flushes at once): a child keeps it open. */
            pid_t child = fork();
            if (child < 0) {
                perror("pvfb: fork");
                return 6;
            }
            if (child == 0) {
                nap(hold);
                _exit(0);
            }
            printf("PVFB-DIRTY %u %d\n", s, (int)child);
            return 0;
        }
        msync(fb, fix.smem_len, MS_SYNC);
        printf("PVFB-DRAWN %u\n", s);
        fflush(stdout);
        nap(hold);
    }
    munmap(fb, fix.smem_len);
    close(fd);
    return 0;
}
"""


def pattern_pixel(x: int, y: int, seed: int) -> tuple[int, int, int]:
    """The (r, g, b) ``pvfb draw SEED`` writes at (x, y) (XRGB8888)."""
    return (x * 3 + seed) & 0xFF, (y * 5 + seed * 7) & 0xFF, (x ^ y ^ seed) & 0xFF


def expected_frame(width: int, height: int, seed: int) -> npt.NDArray[np.uint8]:
    """The RGBA image (height, width, 4) ``pvfb draw SEED`` produces on a ``width`` x ``height`` mode."""
    x = np.arange(width, dtype=np.uint32)[None, :]
    y = np.arange(height, dtype=np.uint32)[:, None]
    s = np.uint32(seed)
    img = np.empty((height, width, 4), dtype=np.uint8)
    img[..., 0] = ((x * 3 + s) & 0xFF).astype(np.uint8)
    img[..., 1] = ((y * 5 + s * 7) & 0xFF).astype(np.uint8).repeat(width, axis=1)
    img[..., 2] = ((x ^ y ^ s) & 0xFF).astype(np.uint8)
    img[..., 3] = 0xFF
    return img


def inputs_digest() -> str:
    """A digest of everything the initramfs is made from here (the init script and the helper's source)."""
    return hashlib.sha256((INIT_SCRIPT + PVFB_SOURCE).encode()).hexdigest()[:16]


def compile_helper(source: str, out: Path, cc: str = "gcc") -> subprocess.CompletedProcess[str]:
    """Compile ``source`` (C) into a static binary at ``out``; the completed ``cc`` process (check its code)."""
    with tempfile.TemporaryDirectory(prefix="pvuml-cc-") as d:
        src = Path(d) / "helper.c"
        src.write_text(source)
        return subprocess.run([cc, "-static", "-O2", "-Wall", "-o", str(out), str(src)], capture_output=True,
                              text=True, errors="replace", timeout=300, check=False)


__all__ = ["DONE_MARKER", "INIT_MARKER", "INIT_SCRIPT", "NOHOST_MARKER", "PVFB_SOURCE", "RUN_ARG",
           "compile_helper", "expected_frame", "inputs_digest", "pattern_pixel"]
