"""Register-level traces, decoded into what a driver did: status writes, feature negotiation, queue set-up, PMCSR
writes, MSI-X programming — the same decoding for the real kernel and for pyvirtio's model driver.

Contract. :func:`driver_steps` turns the accesses one function saw (the machine trace's ``config_*`` and
``bar_*`` events of that function, model or real) into :class:`Step` records in order. Each step has a category
(:class:`Cat`) and a text that names the register and the value where the value is the driver's choice and
comparable across runs (a status byte, a feature word, a queue size, a vector number, a power state), and
leaves out what is an address in one particular guest (ring addresses, MSI address/data: "programmed"). Reads
are kept only where they are part of a negotiation (device features, queue sizes, ``num_queues``). Repeated
notifications of one queue collapse into one step. :func:`compare` aligns two step lists (difflib) and returns the
differences; :func:`phases` cuts a run's steps at given times.

The layout is the function's (pyvirtio's QEMU layout: common config at BAR4+0, ISR +0x1000, device config
+0x2000, notify +0x3000; MSI-X table at BAR1+0), read from the function object, so the decoding cannot drift
from the model.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.spec.constants import (
    PCI_COMMAND,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL,
    PCI_PM_CTRL,
    QEMU_COMMON_OFFSET,
    QEMU_DEVICE_OFFSET,
    QEMU_ISR_OFFSET,
    QEMU_MODERN_BAR,
    QEMU_MSIX_BAR,
    QEMU_NOTIFY_OFF_MULTIPLIER,
    QEMU_NOTIFY_OFFSET,
    QEMU_REGION_SIZE,
    CommonCfg,
    PciCommand,
    Pmcsr,
)
from pyvirtio.trace import Kind, TraceEvent

_ADDRESS_FIELDS = {CommonCfg.QUEUE_DESC_LO, CommonCfg.QUEUE_DESC_HI, CommonCfg.QUEUE_DRIVER_LO,
                   CommonCfg.QUEUE_DRIVER_HI, CommonCfg.QUEUE_DEVICE_LO, CommonCfg.QUEUE_DEVICE_HI}
_BAR_REGS = range(0x10, 0x28)
_ROM_BAR = 0x30


class Cat(Enum):
    """What a step belongs to."""

    ENUMERATION = "enumeration"  # BAR sizing and assignment, other PCI header set-up by the PCI core
    COMMAND = "command"
    STATUS = "status"
    FEATURES = "features"
    QUEUE = "queue"
    MSIX = "msix"
    PM = "pm"
    NOTIFY = "notify"
    CONFIG = "config"  # device configuration space
    ISR = "isr"


#: The categories a model-vs-real comparison looks at (the PCI core's enumeration is the firmware's and the
#: kernel's business, which the model does not play).
DRIVER_CATS = frozenset(Cat) - {Cat.ENUMERATION}


@dataclass(frozen=True)
class Step:
    """One decoded driver action at time ``t`` (ns)."""

    t: int
    cat: Cat
    text: str

    def __str__(self) -> str:
        return self.text


def _command(v: int) -> str:
    names = [f.name for f in (PciCommand.IO, PciCommand.MEMORY, PciCommand.MASTER, PciCommand.INTX_DISABLE)
             if f.name and v & f]
    return "|".join(names) if names else "0"


def _pmcsr(v: int) -> str:
    state = v & Pmcsr.STATE_MASK
    name = "D3hot" if state == 3 else f"D{state}"
    extra = [n for n, bit in (("PME_En", 0x100), ("PME_Status", 0x8000)) if v & bit]
    return name + ("" if not extra else " " + "|".join(extra))


#: What a driver's write to a common-config field is, as a step: its category and text (``sel`` is the
#: field's selector: driver_feature_select for the feature word, queue_select for the queue fields).
_COMMON_WRITES: dict[int, tuple[Cat, str]] = {
    CommonCfg.DRIVER_FEATURE: (Cat.FEATURES, "driver_feature[{sel}] <- {value:#010x}"),
    CommonCfg.CONFIG_MSIX_VECTOR: (Cat.MSIX, "config vector <- {value:#x}"),
    CommonCfg.DEVICE_STATUS: (Cat.STATUS, "status <- {value:#04x}"),
    CommonCfg.QUEUE_SIZE: (Cat.QUEUE, "queue {sel} size <- {value}"),
    CommonCfg.QUEUE_MSIX_VECTOR: (Cat.QUEUE, "queue {sel} vector <- {value:#x}"),
    CommonCfg.QUEUE_ENABLE: (Cat.QUEUE, "queue {sel} enable <- {value}"),
    CommonCfg.QUEUE_RESET: (Cat.QUEUE, "queue {sel} reset <- {value}"),
}


def driver_steps(fn: VirtioPciFunction, events: Iterable[TraceEvent], *, since: float = -1) -> list[Step]:
    """The steps of the accesses to ``fn`` among ``events`` (see the module contract). Events at or before
    ``since`` (ns) are skipped."""
    out: list[Step] = []
    dfsel = drvsel = qsel = 0
    addr_set: set[int] = set()
    msix_touched: dict[int, set[int]] = {}

    def add(t: int, cat: Cat, text: str) -> None:
        if cat is Cat.NOTIFY and out and out[-1].cat is Cat.NOTIFY and out[-1].text == text:
            return
        out.append(Step(t, cat, text))

    for e in events:
        if e.src != fn.name or e.t <= since or e.kind not in (Kind.CONFIG_WRITE, Kind.CONFIG_READ, Kind.BAR_WRITE,
                                                              Kind.BAR_READ):
            continue
        d = e.detail
        if d.get("unmapped") or d.get("via"):
            continue
        off, size = int(d.get("offset", 0)), int(d.get("size", 0))
        value = int(d["value"]) if "value" in d else 0
        if e.kind is Kind.CONFIG_WRITE:
            if off <= PCI_COMMAND < off + size:
                add(e.t, Cat.COMMAND, f"COMMAND <- {_command(value >> (8 * (PCI_COMMAND - off)) & 0xFFFF)}")
            elif fn.pm_cap and off == fn.pm_cap + PCI_PM_CTRL:
                add(e.t, Cat.PM, f"PMCSR <- {_pmcsr(value)}")
            elif off == fn.msix_cap + PCI_MSIX_FLAGS:
                bits = [n for n, b in (("enable", PCI_MSIX_FLAGS_ENABLE), ("mask-all", PCI_MSIX_FLAGS_MASKALL))
                        if value & b]
                add(e.t, Cat.MSIX, f"MSI-X control <- {'|'.join(bits) or '0'}")
            elif off in _BAR_REGS or off == _ROM_BAR:
                what = "sizing" if value in (0xFFFFFFFF, 0xFFFFF800) else "set"
                add(e.t, Cat.ENUMERATION, f"cfg {off:#04x} <- {what}")
            else:
                add(e.t, Cat.ENUMERATION, f"cfg {off:#04x}/{size} <- {value:#x}")
            continue
        if e.kind is Kind.CONFIG_READ:
            continue
        bar = int(d.get("bar", -1))
        if bar == QEMU_MSIX_BAR:
            if e.kind is Kind.BAR_WRITE and off < fn.msix.nvectors * PCI_MSIX_ENTRY_SIZE:
                entry, field = divmod(off, PCI_MSIX_ENTRY_SIZE)
                if field == 12:
                    add(e.t, Cat.MSIX, f"MSI-X entry {entry} {'masked' if value & 1 else 'unmasked'}")
                else:
                    touched = msix_touched.setdefault(entry, set())
                    touched.add(field)
                    if touched >= {0, 4, 8}:
                        touched.clear()
                        add(e.t, Cat.MSIX, f"MSI-X entry {entry} programmed")
            continue
        if bar != QEMU_MODERN_BAR:
            continue
        region, roff = divmod(off, QEMU_REGION_SIZE)
        base = region * QEMU_REGION_SIZE
        if base == QEMU_COMMON_OFFSET:
            f = roff
            if e.kind is Kind.BAR_READ:
                if f == CommonCfg.DEVICE_FEATURE:
                    add(e.t, Cat.FEATURES, f"device_feature[{dfsel}] = {value:#010x}")
                elif f == CommonCfg.NUM_QUEUES:
                    add(e.t, Cat.QUEUE, f"num_queues = {value}")
                elif f == CommonCfg.QUEUE_SIZE:
                    add(e.t, Cat.QUEUE, f"queue {qsel} size = {value}")
                continue
            if f == CommonCfg.DEVICE_FEATURE_SELECT:
                dfsel = value
            elif f == CommonCfg.DRIVER_FEATURE_SELECT:
                drvsel = value
            elif f == CommonCfg.QUEUE_SELECT:
                qsel = value
            elif f in _COMMON_WRITES:
                cat, text = _COMMON_WRITES[f]
                add(e.t, cat, text.format(sel=drvsel if f == CommonCfg.DRIVER_FEATURE else qsel, value=value))
            elif f in _ADDRESS_FIELDS:
                addr_set.add(f)
                if addr_set >= _ADDRESS_FIELDS:
                    addr_set.clear()
                    add(e.t, Cat.QUEUE, f"queue {qsel} addresses set")
            else:
                add(e.t, Cat.QUEUE, f"common {f:#x} <- {value:#x}")
        elif base == QEMU_ISR_OFFSET and e.kind is Kind.BAR_READ:
            add(e.t, Cat.ISR, "ISR read")
        elif base == QEMU_DEVICE_OFFSET:
            add(e.t, Cat.CONFIG, f"device config {'read' if e.kind is Kind.BAR_READ else 'write'} {roff:#x}/{size}")
        elif base >= QEMU_NOTIFY_OFFSET and e.kind is Kind.BAR_WRITE:
            add(e.t, Cat.NOTIFY, f"notify queue {(off - QEMU_NOTIFY_OFFSET) // QEMU_NOTIFY_OFF_MULTIPLIER}")
    return out


def phases(steps: Sequence[Step], cuts: Sequence[tuple[str, int]]) -> dict[str, list[Step]]:
    """Split ``steps`` at the times of ``cuts`` ((name, t) in time order): steps before the first cut go to
    ``"before"``, then each cut's name takes the steps from its time up to the next cut."""
    out: dict[str, list[Step]] = {"before": []}
    names = ["before"] + [n for n, _ in cuts]
    times = [t for _, t in cuts]
    for n in names:
        out.setdefault(n, [])
    for s in steps:
        i = 0
        while i < len(times) and s.t >= times[i]:
            i += 1
        out[names[i]].append(s)
    return out


@dataclass(frozen=True)
class Difference:
    """One difference between two step lists: ``kind`` is ``only-real``, ``only-model`` or ``changed``."""

    kind: str
    real: tuple[str, ...]
    model: tuple[str, ...]

    def lines(self) -> list[str]:
        """The difference as ``-``/``+`` lines (``-`` real, ``+`` model)."""
        return [f"  - real:  {r}" for r in self.real] + [f"  + model: {m}" for m in self.model]


def compare(real: Sequence[Step], model: Sequence[Step], cats: frozenset[Cat] = DRIVER_CATS) -> list[Difference]:
    """Where the two step lists (restricted to ``cats``) differ, in order; empty when they agree."""
    a = [s.text for s in real if s.cat in cats]
    b = [s.text for s in model if s.cat in cats]
    out: list[Difference] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        kind = {"delete": "only-real", "insert": "only-model"}.get(tag, "changed")
        out.append(Difference(kind, tuple(a[i1:i2]), tuple(b[j1:j2])))
    return out


def side_by_side(real: Sequence[Step], model: Sequence[Step], cats: frozenset[Cat] = DRIVER_CATS,
                 width: int = 44) -> list[str]:
    """Both step lists in two aligned columns (``=`` same, ``!`` different, ``<`` real only, ``>`` model only)."""
    a = [s.text for s in real if s.cat in cats]
    b = [s.text for s in model if s.cat in cats]
    lines: list[str] = [f"  {'real kernel':<{width}} {'pyvirtio model driver'}"]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        left, right = a[i1:i2], b[j1:j2]
        mark = {"equal": "=", "delete": "<", "insert": ">", "replace": "!"}[tag]
        for k in range(max(len(left), len(right))):
            lt = left[k] if k < len(left) else ""
            rt = right[k] if k < len(right) else ""
            lines.append(f"{mark} {lt:<{width}} {rt}")
    return lines


__all__ = ["DRIVER_CATS", "Cat", "Difference", "Step", "compare", "driver_steps", "phases", "side_by_side"]
