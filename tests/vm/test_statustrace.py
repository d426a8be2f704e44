"""Status-trace parsing: pointer -> device mapping, windows, deduplicated and annotated sequences."""

from __future__ import annotations

from pyvirtio.vm import statustrace as st

GPU, BLK, RNG, KBD = "0x5600000a0000", "0x5600000b0000", "0x5600000c0000", "0x5600000d0000"


def _s(ptr: str, val: int) -> str:
    return f"virtio_set_status vdev {ptr} val {val}"


def sample() -> str:
    """A boot (firmware drives blk, the kernel probes gpu, blk, input, rng), then an S3 cycle."""
    lines = [_s(p, 0) for p in (KBD, RNG, BLK, GPU)]
    lines += [_s(BLK, 0), _s(BLK, 3), _s(BLK, 11), _s(BLK, 15)]  # firmware
    lines += [_s(p, v) for p in (GPU, BLK, KBD, RNG) for v in (0, 0, 1)]
    lines += [_s(GPU, 3), _s(GPU, 11), _s(GPU, 15), "virtio_gpu_cmd_get_edid scanout 0",
              "virtio_gpu_cmd_get_display_info ", "virtio_gpu_cmd_res_create_2d res 0x1, fmt 0x2, w 1280, h 800"]
    lines += [_s(BLK, 3), _s(BLK, 11), _s(BLK, 15),
              f"virtio_blk_req_complete vdev {BLK} req 0x5600001 status 0",
              "virtio_gpu_cmd_res_flush res 0x1, x 0, y 0, w 8, h 16"]  # a flush after blk's DRIVER_OK
    lines += [_s(KBD, 3), _s(KBD, 11), _s(KBD, 15), "virtio_gpu_cmd_res_flush res 0x1, x 0, y 0, w 8, h 16"]
    lines += [_s(RNG, 3), _s(RNG, 11), _s(RNG, 15), f"virtio_rng_pushed rng {RNG}: 64 bytes pushed"]
    lines += ["qmp_enter_x_query_virtio ", "qmp_enter_x_query_virtio "]
    lines += [_s(KBD, 11), _s(RNG, 0), _s(GPU, 11), _s(BLK, 0), "system_wakeup_request reason=3",
              "guest_cpu_reset cpu=0x1"]
    lines += [_s(p, 0) for p in (KBD, RNG, BLK, GPU)]
    lines += [_s(p, v) for p in (GPU, RNG, BLK, KBD) for v in (0, 0, 1, 3, 11, 15)]
    lines += ["qmp_enter_x_query_virtio "]
    lines += [_s(p, 15) for p in (KBD, RNG, BLK, GPU)]  # QEMU stopping the VM at quit
    return "\n".join(lines) + "\n"


def test_parse_skips_garbage_and_reads_values() -> None:
    text = ("junk line\n" + _s(GPU, 15) + "\n1234@1700000000.000001:" + _s(BLK, 11)
            + "\nvirtio_set_status vdev 0x1 va")
    recs = [r for r in st.parse_trace(text) if r.event == "virtio_set_status"]
    assert [(r.vdev, r.value) for r in recs] == [(GPU, 15), (BLK, 11)]


def test_identify_devices_from_evidence() -> None:
    recs = st.parse_trace(sample())
    assert st.identify_devices(recs, ["gpu", "blk", "rng", "input"]) == {
        GPU: "gpu", BLK: "blk", RNG: "rng", KBD: "input"}


def test_identify_leaves_ambiguous_out() -> None:
    recs = st.parse_trace(_s(GPU, 15) + "\n" + _s(KBD, 15) + "\n")
    assert st.identify_devices(recs, ["gpu", "input"]) == {}


def test_window_sequences_dedup_and_initial_status() -> None:
    recs = st.parse_trace(sample())
    mapping = st.identify_devices(recs, ["gpu", "blk", "rng", "input"])
    marks = st.marker_indices(recs)
    assert len(marks) == 3
    seqs = st.status_sequences(recs, mapping, marks[1], marks[2])
    assert seqs["gpu"] == [15, 11, 0, 1, 3, 11, 15]
    assert seqs["input"] == [15, 11, 0, 1, 3, 11, 15]
    assert seqs["blk"] == [15, 0, 1, 3, 11, 15]
    assert seqs["rng"] == [15, 0, 1, 3, 11, 15]
    whole = st.status_sequences(recs, mapping)
    assert whole["blk"][:5] == [0, 3, 11, 15, 0]  # firmware, then the kernel


def test_annotated_sequences_keep_repeats_and_mark_wakeup() -> None:
    recs = st.parse_trace(sample())
    mapping = st.identify_devices(recs, ["gpu", "blk", "rng", "input"])
    marks = st.marker_indices(recs)
    ann = st.annotated_sequences(recs, mapping, marks[1], marks[2])
    assert ann["gpu"] == "0x0b [wake] 0x00 0x00 0x00 0x01 0x03 0x0b 0x0f"


def test_gpu_commands_and_helpers() -> None:
    recs = st.parse_trace(sample())
    assert len(st.events_between(recs, "virtio_gpu_cmd_")) == 5
    assert st.last_index(recs, "system_wakeup_request") is not None
    assert st.last_index(recs, "nothing") is None
    assert st.dedup([1, 1, 2, 2, 1]) == [1, 2, 1]
    assert st.format_sequence([15, 11, 0]) == "0x0f 0x0b 0x00"
