"""Every number pyvirtio uses, in one place.

Values follow ``shared/spec/virtio-reference.md`` (virtio 1.4 cs01, Linux uapi, QEMU). Section numbers in the
``# §`` comments refer to that document ("reference §x"); docstrings cite the spec itself ("virtio 1.4 §x").
Nothing else in the package may hard-code a register offset, a bit number or a command code: import it from here.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

# --------------------------------------------------------------------------------------------------------------
# §1.1 device status
# --------------------------------------------------------------------------------------------------------------


class Status(IntFlag):
    """``device status`` bits (virtio 1.4 §2.1)."""

    RESET = 0x00
    ACKNOWLEDGE = 0x01
    DRIVER = 0x02
    DRIVER_OK = 0x04
    FEATURES_OK = 0x08
    SUSPEND = 0x10  # new in 1.4; only meaningful with VIRTIO_F_SUSPEND
    DEVICE_NEEDS_RESET = 0x40
    FAILED = 0x80


#: Bits a driver may set in ``device status``. DEVICE_NEEDS_RESET belongs to the device.
DRIVER_STATUS_BITS = (
    Status.ACKNOWLEDGE | Status.DRIVER | Status.DRIVER_OK | Status.FEATURES_OK | Status.SUSPEND | Status.FAILED
)

# --------------------------------------------------------------------------------------------------------------
# §1.5 transport / reserved feature bits (bit numbers, not masks)
# --------------------------------------------------------------------------------------------------------------


class Feature(IntEnum):
    """Transport feature *bit numbers* (virtio 1.4 §6 "Reserved Feature Bits")."""

    NOTIFY_ON_EMPTY = 24
    ANY_LAYOUT = 27
    INDIRECT_DESC = 28
    EVENT_IDX = 29
    VERSION_1 = 32
    ACCESS_PLATFORM = 33
    RING_PACKED = 34
    IN_ORDER = 35
    ORDER_PLATFORM = 36
    SR_IOV = 37
    NOTIFICATION_DATA = 38
    NOTIF_CONFIG_DATA = 39
    RING_RESET = 40
    ADMIN_VQ = 41
    SUSPEND = 43  # virtio 1.4; David Stevens' 2024 Linux RFC and crosvm used 42 (collides with net GUEST_RSC6)


def bit(n: int) -> int:
    """Mask of feature bit ``n``."""
    return 1 << n


#: The abandoned 2023 freeze_mode proposal never got a feature bit; pyvirtio uses a configurable one from the
#: "reserved for future extensions" range 44..49. It is NOT assigned by the spec.
FREEZE_MODE_FEATURE_DEFAULT = 44
#: the bits the freeze_mode proposal may use: the spec's "reserved for future extensions" range (never assigned)
FREEZE_MODE_FEATURE_BITS = range(44, 50)

# --------------------------------------------------------------------------------------------------------------
# Device ids and PCI identity (§2.1)
# --------------------------------------------------------------------------------------------------------------


class DeviceId(IntEnum):
    """Virtio device ids (virtio 1.4 §5 "Device Types"); the modern PCI device id is 0x1040 + id (§4.1.2)."""

    NET = 1
    BLOCK = 2
    CONSOLE = 3
    ENTROPY = 4
    BALLOON = 5
    INPUT = 18
    GPU = 16
    TEST = 0x3F  # pyvirtio's own test device; the last id that still maps into 0x1040..0x107F


VIRTIO_PCI_VENDOR_ID = 0x1AF4
VIRTIO_PCI_MODERN_DEVICE_ID_BASE = 0x1040
VIRTIO_PCI_REVISION_MODERN = 1
QEMU_SUBSYSTEM_VENDOR_ID = 0x1AF4
QEMU_SUBSYSTEM_DEVICE_ID = 0x1100


class PciClass(IntEnum):
    """24-bit class codes (base, sub, prog-if) as QEMU assigns them."""

    OTHERS = 0xFF0000
    DISPLAY_VGA = 0x030000
    DISPLAY_OTHER = 0x038000
    STORAGE_SCSI = 0x010000
    NETWORK_ETHERNET = 0x020000
    COMMUNICATION_OTHER = 0x078000


# --------------------------------------------------------------------------------------------------------------
# PCI configuration space (type 0 header)
# --------------------------------------------------------------------------------------------------------------

PCI_CONFIG_SPACE_SIZE = 4096
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_HEADER_TYPE = 0x0E
PCI_BAR0 = 0x10
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D
PCI_NUM_BARS = 6


class PciCommand(IntFlag):
    """Bits of the PCI Command register at ``PCI_COMMAND`` (PCI 3.0 §6.2.2)."""

    IO = 0x0001
    MEMORY = 0x0002
    MASTER = 0x0004
    INTX_DISABLE = 0x0400


class PciStatusReg(IntFlag):
    """Bits of the PCI Status register at ``PCI_STATUS`` (PCI 3.0 §6.2.3)."""

    INTERRUPT = 0x0008
    CAP_LIST = 0x0010


PCI_BAR_MEM64 = 0x4
PCI_BAR_PREFETCH = 0x8


class PciCapId(IntEnum):
    """Capability ids of the PCI capability list (PCI 3.0 §6.7): power management, vendor, PCIe, MSI-X."""

    PM = 0x01
    VENDOR = 0x09
    EXP = 0x10
    MSIX = 0x11


# §2.8 PCI Power Management capability
PCI_PM_CAP_SIZE = 8
PCI_PM_PMC = 2
PCI_PM_CTRL = 4
PCI_PM_PMC_VERSION_1_2 = 0x0003  # QEMU forces PMC = 0x0003: version 3, no D1/D2, no PME


class Pmcsr(IntFlag):
    """Fields of the PM capability's PMCSR register at ``PCI_PM_CTRL`` (PCI PM 1.2 §3.2.4; reference §2.8)."""

    STATE_MASK = 0x0003
    NO_SOFT_RESET = 0x0008
    PME_ENABLE = 0x0100
    DATA_SELECT = 0x1E00
    DATA_SCALE = 0x6000
    PME_STATUS = 0x8000


class PowerState(IntEnum):
    """Device power states D0..D3hot: the values of the PMCSR ``PowerState`` field (``Pmcsr.STATE_MASK``)."""

    D0 = 0
    D1 = 1
    D2 = 2
    D3HOT = 3


# MSI-X capability (PCI 3.0): id, next, le16 message control, le32 table offset|BIR, le32 PBA offset|BIR
PCI_MSIX_CAP_SIZE = 12
PCI_MSIX_FLAGS = 2
PCI_MSIX_TABLE = 4
PCI_MSIX_PBA = 8
PCI_MSIX_FLAGS_QSIZE = 0x07FF
PCI_MSIX_FLAGS_MASKALL = 0x4000
PCI_MSIX_FLAGS_ENABLE = 0x8000
PCI_MSIX_BIR_MASK = 0x7
PCI_MSIX_ENTRY_SIZE = 16
PCI_MSIX_ENTRY_ADDR_LO = 0
PCI_MSIX_ENTRY_ADDR_HI = 4
PCI_MSIX_ENTRY_DATA = 8
PCI_MSIX_ENTRY_VECTOR_CTRL = 12
PCI_MSIX_ENTRY_CTRL_MASKBIT = 0x1

#: Address window an MSI write targets on x86 (the LAPIC range); the machine decodes messages sent here.
MSI_ADDRESS_BASE = 0xFEE00000

# --------------------------------------------------------------------------------------------------------------
# §2.2 virtio PCI capabilities
# --------------------------------------------------------------------------------------------------------------


class VirtioPciCap(IntEnum):
    """``cfg_type`` values of ``struct virtio_pci_cap`` (virtio 1.4 §4.1.4)."""

    COMMON_CFG = 1
    NOTIFY_CFG = 2
    ISR_CFG = 3
    DEVICE_CFG = 4
    PCI_CFG = 5
    SHARED_MEMORY_CFG = 8
    VENDOR_CFG = 9


VIRTIO_PCI_CAP_LEN = 16
VIRTIO_PCI_NOTIFY_CAP_LEN = 20
VIRTIO_PCI_CFG_CAP_LEN = 20
# offsets inside struct virtio_pci_cap
VIRTIO_PCI_CAP_VNDR = 0
VIRTIO_PCI_CAP_NEXT = 1
VIRTIO_PCI_CAP_CAP_LEN = 2
VIRTIO_PCI_CAP_CFG_TYPE = 3
VIRTIO_PCI_CAP_BAR = 4
VIRTIO_PCI_CAP_ID = 5
VIRTIO_PCI_CAP_OFFSET = 8
VIRTIO_PCI_CAP_LENGTH = 12
VIRTIO_PCI_NOTIFY_CAP_MULT = 16
VIRTIO_PCI_CFG_DATA = 16


class CommonCfg(IntEnum):
    """Byte offsets in ``struct virtio_pci_common_cfg`` (virtio 1.4 §4.1.4.3; 64 bytes, reference §2.3)."""

    DEVICE_FEATURE_SELECT = 0
    DEVICE_FEATURE = 4
    DRIVER_FEATURE_SELECT = 8
    DRIVER_FEATURE = 12
    CONFIG_MSIX_VECTOR = 16
    NUM_QUEUES = 18
    DEVICE_STATUS = 20
    CONFIG_GENERATION = 21
    QUEUE_SELECT = 22
    QUEUE_SIZE = 24
    QUEUE_MSIX_VECTOR = 26
    QUEUE_ENABLE = 28
    QUEUE_NOTIFY_OFF = 30
    QUEUE_DESC_LO = 32
    QUEUE_DESC_HI = 36
    QUEUE_DRIVER_LO = 40
    QUEUE_DRIVER_HI = 44
    QUEUE_DEVICE_LO = 48
    QUEUE_DEVICE_HI = 52
    QUEUE_NOTIF_CONFIG_DATA = 56  # Linux: queue_notify_data
    QUEUE_RESET = 58
    ADMIN_QUEUE_INDEX = 60
    ADMIN_QUEUE_NUM = 62
    # pyvirtio model of the abandoned 2023 proposal, placed at the END as its reviewers required (§2.9)
    FREEZE_MODE = 64


#: Width in bytes of every common-config field (64-bit fields are two 32-bit halves).
COMMON_CFG_WIDTH: dict[int, int] = {
    CommonCfg.DEVICE_FEATURE_SELECT: 4,
    CommonCfg.DEVICE_FEATURE: 4,
    CommonCfg.DRIVER_FEATURE_SELECT: 4,
    CommonCfg.DRIVER_FEATURE: 4,
    CommonCfg.CONFIG_MSIX_VECTOR: 2,
    CommonCfg.NUM_QUEUES: 2,
    CommonCfg.DEVICE_STATUS: 1,
    CommonCfg.CONFIG_GENERATION: 1,
    CommonCfg.QUEUE_SELECT: 2,
    CommonCfg.QUEUE_SIZE: 2,
    CommonCfg.QUEUE_MSIX_VECTOR: 2,
    CommonCfg.QUEUE_ENABLE: 2,
    CommonCfg.QUEUE_NOTIFY_OFF: 2,
    CommonCfg.QUEUE_DESC_LO: 4,
    CommonCfg.QUEUE_DESC_HI: 4,
    CommonCfg.QUEUE_DRIVER_LO: 4,
    CommonCfg.QUEUE_DRIVER_HI: 4,
    CommonCfg.QUEUE_DEVICE_LO: 4,
    CommonCfg.QUEUE_DEVICE_HI: 4,
    CommonCfg.QUEUE_NOTIF_CONFIG_DATA: 2,
    CommonCfg.QUEUE_RESET: 2,
    CommonCfg.ADMIN_QUEUE_INDEX: 2,
    CommonCfg.ADMIN_QUEUE_NUM: 2,
    CommonCfg.FREEZE_MODE: 2,
}
COMMON_CFG_SIZE = 64
COMMON_CFG_SIZE_WITH_FREEZE_MODE = 66


class FreezeMode(IntEnum):
    """Values of the common-config ``freeze_mode`` field of the 2023 proposal (reference §2.9). Never merged."""

    UNFREEZE = 0
    FREEZE_S3 = 3


VIRTIO_MSI_NO_VECTOR = 0xFFFF
VIRTIO_PCI_ISR_QUEUE = 0x1
VIRTIO_PCI_ISR_CONFIG = 0x2

# QEMU BAR layout (§2.7): MSI-X on BAR1, the modern structures on 64-bit BAR4
QEMU_MSIX_BAR = 1
QEMU_MODERN_BAR = 4
QEMU_COMMON_OFFSET = 0x0000
QEMU_ISR_OFFSET = 0x1000
QEMU_DEVICE_OFFSET = 0x2000
QEMU_NOTIFY_OFFSET = 0x3000
QEMU_REGION_SIZE = 0x1000
QEMU_NOTIFY_OFF_MULTIPLIER = 4
QEMU_VIRTQUEUE_MAX = 1024

# --------------------------------------------------------------------------------------------------------------
# §3.1 split virtqueue
# --------------------------------------------------------------------------------------------------------------

VIRTQ_MAX_SIZE = 32768
VIRTQ_DESC_SIZE = 16
VIRTQ_DESC_ALIGN = 16
VIRTQ_AVAIL_ALIGN = 2
VIRTQ_USED_ALIGN = 4
VIRTQ_USED_ELEM_SIZE = 8
VIRTQ_MAX_CHAIN_BYTES = 1 << 32


class DescFlag(IntFlag):
    """``flags`` bits of ``struct virtq_desc`` (virtio 1.4 §2.7.5; INDIRECT: §2.7.5.3)."""

    NEXT = 1
    WRITE = 2
    INDIRECT = 4


VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

# Split-ring field offsets (virtio 1.4 §2.7.6 / §2.7.8): both rings start with le16 flags, le16 idx, then ring[]
VIRTQ_RING_FLAGS = 0
VIRTQ_RING_IDX = 2
VIRTQ_RING_ENTRIES = 4
VIRTQ_AVAIL_ELEM_SIZE = 2  # le16 head index
VIRTQ_RING_HEADER_SIZE = 6  # flags + idx + used_event/avail_event
#: Ring indices are free-running le16 values (wrap at 65536).
VIRTQ_IDX_MASK = 0xFFFF
#: ``len`` is le32.
VIRTQ_DESC_LEN_MAX = 0xFFFFFFFF
#: Largest indirect table a device accepts: ``len / 16`` must fit the le16 ``next`` field (rust-vmm).
VIRTQ_MAX_INDIRECT_ENTRIES = 0xFFFF
#: Queue Align of the legacy (transitional) contiguous layout on PCI.
VIRTQ_LEGACY_ALIGN = 4096

# §3.2 packed ring (masks; Linux defines shift counts 7 and 15)
VIRTQ_PACKED_DESC_F_AVAIL = 1 << 7
VIRTQ_PACKED_DESC_F_USED = 1 << 15

# --------------------------------------------------------------------------------------------------------------
# virtio-rng (device id 4): no config, one request queue
# --------------------------------------------------------------------------------------------------------------

RNG_REQUESTQ = 0

# --------------------------------------------------------------------------------------------------------------
# §4 virtio-gpu (device id 16)
# --------------------------------------------------------------------------------------------------------------

GPU_CONTROLQ = 0
GPU_CURSORQ = 1
GPU_MAX_SCANOUTS = 16


class GpuFeature(IntEnum):
    """virtio-gpu feature *bit numbers* (virtio 1.4 §5.7.3)."""

    VIRGL = 0
    EDID = 1
    RESOURCE_UUID = 2
    RESOURCE_BLOB = 3
    CONTEXT_INIT = 4
    BLOB_ALIGNMENT = 5  # spec, 2025-11-07
    #: The abandoned 2023 proposal's bit. It is the same number as BLOB_ALIGNMENT: pyvirtio never offers both.
    FREEZING = 5


class GpuCfg(IntEnum):
    """Byte offsets in ``struct virtio_gpu_config`` (virtio 1.4 §5.7.4)."""

    EVENTS_READ = 0
    EVENTS_CLEAR = 4
    NUM_SCANOUTS = 8
    NUM_CAPSETS = 12
    BLOB_ALIGNMENT = 16


GPU_CONFIG_SIZE = 16
GPU_CONFIG_SIZE_BLOB_ALIGNMENT = 20
GPU_EVENT_DISPLAY = 1 << 0


class GpuCmd(IntEnum):
    """Command codes of ``enum virtio_gpu_ctrl_type``, the request header ``type`` (virtio 1.4 §5.7.6.7)."""

    GET_DISPLAY_INFO = 0x0100
    RESOURCE_CREATE_2D = 0x0101
    RESOURCE_UNREF = 0x0102
    SET_SCANOUT = 0x0103
    RESOURCE_FLUSH = 0x0104
    TRANSFER_TO_HOST_2D = 0x0105
    RESOURCE_ATTACH_BACKING = 0x0106
    RESOURCE_DETACH_BACKING = 0x0107
    GET_CAPSET_INFO = 0x0108
    GET_CAPSET = 0x0109
    GET_EDID = 0x010A
    RESOURCE_ASSIGN_UUID = 0x010B
    RESOURCE_CREATE_BLOB = 0x010C
    SET_SCANOUT_BLOB = 0x010D
    CTX_CREATE = 0x0200
    CTX_DESTROY = 0x0201
    CTX_ATTACH_RESOURCE = 0x0202
    CTX_DETACH_RESOURCE = 0x0203
    RESOURCE_CREATE_3D = 0x0204
    TRANSFER_TO_HOST_3D = 0x0205
    TRANSFER_FROM_HOST_3D = 0x0206
    SUBMIT_3D = 0x0207
    RESOURCE_MAP_BLOB = 0x0208
    RESOURCE_UNMAP_BLOB = 0x0209
    UPDATE_CURSOR = 0x0300
    MOVE_CURSOR = 0x0301
    #: Abandoned 2023 proposal (v2+ value; v1 used 0x1300). Never in the spec.
    STATUS_FREEZING = 0x0400


class GpuResp(IntEnum):
    """Response codes of ``enum virtio_gpu_ctrl_type``, the response header ``type`` (virtio 1.4 §5.7.6.7)."""

    OK_NODATA = 0x1100
    OK_DISPLAY_INFO = 0x1101
    OK_CAPSET_INFO = 0x1102
    OK_CAPSET = 0x1103
    OK_EDID = 0x1104
    OK_RESOURCE_UUID = 0x1105
    OK_MAP_INFO = 0x1106
    ERR_UNSPEC = 0x1200
    ERR_OUT_OF_MEMORY = 0x1201
    ERR_INVALID_SCANOUT_ID = 0x1202
    ERR_INVALID_RESOURCE_ID = 0x1203
    ERR_INVALID_CONTEXT_ID = 0x1204
    ERR_INVALID_PARAMETER = 0x1205


class GpuFlag(IntFlag):
    """``flags`` bits of ``struct virtio_gpu_ctrl_hdr`` (virtio 1.4 §5.7.6.7)."""

    FENCE = 1 << 0
    INFO_RING_IDX = 1 << 1


class GpuFormat(IntEnum):
    """``enum virtio_gpu_formats``: the pixel formats of 2D resources and blob scanouts (virtio 1.4 §5.7.6.8)."""

    B8G8R8A8_UNORM = 1
    B8G8R8X8_UNORM = 2
    A8R8G8B8_UNORM = 3
    X8R8G8B8_UNORM = 4
    R8G8B8A8_UNORM = 67
    X8B8G8R8_UNORM = 68
    A8B8G8R8_UNORM = 121
    R8G8B8X8_UNORM = 134


class GpuBlobMem(IntEnum):
    """``blob_mem`` of RESOURCE_CREATE_BLOB: where a blob's memory lives (virtio 1.4 §5.7.6.8)."""

    GUEST = 0x0001
    HOST3D = 0x0002
    HOST3D_GUEST = 0x0003


class GpuBlobFlag(IntFlag):
    """``blob_flags`` of RESOURCE_CREATE_BLOB: how the driver will use the blob (virtio 1.4 §5.7.6.8)."""

    USE_MAPPABLE = 0x0001
    USE_SHAREABLE = 0x0002
    USE_CROSS_DEVICE = 0x0004


GPU_CTRL_HDR_SIZE = 24
GPU_RECT_SIZE = 16
GPU_MEM_ENTRY_SIZE = 16
GPU_DISPLAY_ONE_SIZE = 24
GPU_RESP_DISPLAY_INFO_SIZE = 408
GPU_RESP_EDID_SIZE = 1056
GPU_EDID_MAX = 1024
GPU_CURSOR_SIZE = 64
GPU_STATUS_FREEZING_SIZE = 28

# -- virtio-gpu: sizes of every wire struct (reference §4.4; hdr = 24 bytes) --------------------------------------
GPU_GET_EDID_SIZE = 32
GPU_RESOURCE_CREATE_2D_SIZE = 40
GPU_RESOURCE_UNREF_SIZE = 32
GPU_SET_SCANOUT_SIZE = 48
GPU_RESOURCE_FLUSH_SIZE = 48
GPU_TRANSFER_TO_HOST_2D_SIZE = 56
GPU_RESOURCE_ATTACH_BACKING_SIZE = 32  # followed by nr_entries mem entries
GPU_RESOURCE_DETACH_BACKING_SIZE = 32
GPU_GET_CAPSET_INFO_SIZE = 32
GPU_RESP_CAPSET_INFO_SIZE = 40
GPU_GET_CAPSET_SIZE = 32
GPU_RESOURCE_ASSIGN_UUID_SIZE = 32
GPU_RESP_RESOURCE_UUID_SIZE = 40
GPU_RESOURCE_CREATE_BLOB_SIZE = 56  # followed by nr_entries mem entries
GPU_SET_SCANOUT_BLOB_SIZE = 96
GPU_CTX_CREATE_SIZE = 96
GPU_CTX_DESTROY_SIZE = 24
GPU_CTX_RESOURCE_SIZE = 32
GPU_RESOURCE_CREATE_3D_SIZE = 72
GPU_TRANSFER_HOST_3D_SIZE = 72
GPU_CMD_SUBMIT_SIZE = 32  # followed by ``size`` bytes of command stream
GPU_RESOURCE_MAP_BLOB_SIZE = 40
GPU_RESP_MAP_INFO_SIZE = 32
GPU_RESOURCE_UNMAP_BLOB_SIZE = 32
GPU_UPDATE_CURSOR_SIZE = 56
GPU_CTX_DEBUG_NAME_MAX = 64
GPU_CONTEXT_INIT_CAPSET_ID_MASK = 0xFF
GPU_RING_IDX_MAX = 63


class GpuCapset(IntEnum):
    """Capability-set ids of GET_CAPSET_INFO (virtio 1.4 §5.7.6.8; older Linux uapi lacks 3 and 5)."""

    VIRGL = 1
    VIRGL2 = 2
    GFXSTREAM = 3
    VENUS = 4
    CROSS_DOMAIN = 5


class GpuMapCache(IntEnum):
    """Caching type in ``map_info`` of RESP_OK_MAP_INFO after RESOURCE_MAP_BLOB (virtio 1.4 §5.7.6.9)."""

    MASK = 0x0F
    NONE = 0x00
    CACHED = 0x01
    UNCACHED = 0x02
    WC = 0x03


GPU_SHM_ID_UNDEFINED = 0
GPU_SHM_ID_HOST_VISIBLE = 1
GPU_RESOURCE_FLAG_Y_0_TOP = 1 << 0
#: Every virtio-gpu 2D format is 32 bits per pixel.
GPU_BYTES_PER_PIXEL = 4
#: QEMU ``virtio_gpu_create_mapping_iov``: more entries than this answer ERR_UNSPEC.
GPU_MAX_MEM_ENTRIES = 16384
#: pyvirtio's cap on resource width/height (0 or larger answers ERR_INVALID_PARAMETER); QEMU has no such cap.
GPU_MAX_DIMENSION = 16384
#: QEMU ``virtio_gpu_check_scanout_bounds``: a scanout rect narrower or lower than this is refused.
GPU_MIN_SCANOUT_SIZE = 16
#: An EDID 1.4 base block; its detailed timing descriptor holds 12-bit active sizes.
GPU_EDID_BLOCK_SIZE = 128
GPU_EDID_MAX_MODE = 4095
#: QEMU ``VIRTIO_GPU_MAX_CMD_SUBMIT_SIZE``: SUBMIT_3D streams beyond this are refused.
GPU_MAX_SUBMIT_SIZE = 4 << 20
#: Default host-memory budget for resources (QEMU ``max_hostmem`` defaults to 256 MiB).
GPU_DEFAULT_HOST_MEMORY = 256 << 20
