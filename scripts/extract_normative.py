#!/usr/bin/env python3
"""Extract the normative statements pyvirtio implements from a virtio spec checkout (developer tool).

Usage::

    scripts/extract_normative.py SPEC_DIR                      # print counts per block
    scripts/extract_normative.py SPEC_DIR --dump               # print every statement with its spec text (review)
    scripts/extract_normative.py SPEC_DIR --loose              # keyword sentences OUTSIDE requirement blocks
    scripts/extract_normative.py SPEC_DIR --update pyvirtio/spec/normative.toml [--commit SHA]

SPEC_DIR is a checkout of https://github.com/oasis-tcs/virtio-spec (LaTeX sources). The inventory in the repo was
made from tag ``v1.4-cs01`` (commit 15f488c162107f7b52fb2e4d0f36a2349fe9d3a9).

What is a statement
    A sentence inside a ``\\devicenormative`` / ``\\drivernormative`` block (or a "Device/Driver Requirements:"
    heading), or inside a "Legacy Interface" section, of the files in :data:`SCOPE`, that carries MUST, MUST NOT,
    SHALL, SHALL NOT, REQUIRED, SHOULD, SHOULD NOT or RECOMMENDED (a sentence with only MAY/OPTIONAL is not one).
    Each ``\\item`` is its own sentence. When a statement ends with ``:`` and a list or listing follows, the list's
    keyword-free sentences and the listing are part of it (e.g. "MUST follow this sequence: 1. reset ...");
    list items with their own keyword are statements of their own. ``note`` environments are informative and
    skipped.

Id scheme (stable; documented in the inventory's header too)
    ``<side>:<block>#<n>`` -- ``side`` is ``dev`` or ``drv``; ``block`` is a short slug of the requirement block's
    ``\\label`` (table :data:`SLUGS`, e.g. ``pci/common-cfg`` for "... / PCI Device Layout / Common configuration
    structure layout"); legacy sections end in ``/legacy``; ``n`` counts the statements of that side in that block
    from 1, in document order. A legacy sentence that binds both transitional devices and drivers gives one
    statement per side. Example: ``dev:pci/common-cfg#3`` is the third device statement of §4.1.4.3.1.

Level
    The strongest keyword of the sentence: the first of MUST / MUST NOT / SHALL / SHALL NOT / REQUIRED if any,
    otherwise the first of SHOULD / SHOULD NOT / RECOMMENDED / NOT RECOMMENDED.

Digest
    ``sha256`` (first 16 hex digits) of the statement's LaTeX source (sentence plus attached list sentences and
    listings, ``\\label`` commands removed) with all whitespace runs collapsed to one space and the ends stripped.
    A changed digest on ``--update`` means the spec text changed: the hand-filled fields are kept and the
    statement is listed for review.

``--update`` keeps the hand-filled fields (summary, applies, reason, implemented_in, tests) of every existing
record: matched by id, or by digest if the sentence moved to another id. The spec's own sentences are never
written to the inventory (only the paraphrased ``summary``); ``--dump`` shows them on stdout for review.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's pyvirtio, when run as a script
from pyvirtio.spec.normative import format_field, toml_string

# ------------------------------------------------------------------------------------------------------------------
# What is in scope
# ------------------------------------------------------------------------------------------------------------------

#: Spec files whose requirement blocks and legacy sections pyvirtio implements (paths relative to SPEC_DIR).
SCOPE: tuple[str, ...] = (
    "content.tex",
    "split-ring.tex",
    "transport-pci.tex",
    "device-types/entropy/description.tex",
    "device-types/gpu/description.tex",
)

#: The document root, for section numbers (the spec builds ``virtio.tex``, which inputs ``main.tex``).
ROOT_FILE = "virtio.tex"

#: Block label -> short slug used in ids. A label missing here gets an automatic slug (and a warning).
SLUGS: dict[str, str] = {
    # content.tex
    "Basic Facilities of a Virtio Device / Device Status Field": "status",
    "Basic Facilities of a Virtio Device / Feature Bits": "features",
    "Basic Facilities of a Virtio Device / Feature Bits / Legacy Interface: A Note on Feature Bits":
        "features/legacy",
    "Basic Facilities of a Virtio Device / Device Reset": "reset",
    "Basic Facilities of a Virtio Device / Device Configuration Space": "config-space",
    "Basic Facilities of a Virtio Device / Device Configuration Space / Legacy Interface: Device Configuration Space":
        "config-space/legacy",
    "Basic Facilities of a Virtio Device / Virtqueues / Virtqueue Reset / Virtqueue Reset": "vq-reset",
    "Basic Facilities of a Virtio Device / Virtqueues / Virtqueue Reset / Virtqueue Re-enable": "vq-reenable",
    "General Initialization And Device Operation / Device Initialization": "init",
    "General Initialization And Device Operation / Device Initialization / Legacy Interface: Device Initialization":
        "init/legacy",
    "General Initialization And Device Operation / Device Cleanup": "cleanup",
    "General Initialization And Device Operation / Device Suspend": "suspend",
    "Reserved Feature Bits": "reserved-features",
    "Reserved Feature Bits / Legacy Interface: Reserved Feature Bits": "reserved-features/legacy",
    # split-ring.tex
    "Basic Facilities of a Virtio Device / Virtqueues": "split/alignment",
    "Basic Facilities of a Virtio Device / Virtqueues / Legacy Interfaces: A Note on Virtqueue Layout":
        "split/layout/legacy",
    "Basic Facilities of a Virtio Device / Virtqueues / Legacy Interfaces: A Note on Virtqueue Endianness":
        "split/endian/legacy",
    "Basic Facilities of a Virtio Device / Message Framing": "split/framing",
    "Basic Facilities of a Virtio Device / Virtqueues / The Virtqueue Descriptor Table": "split/desc",
    "Basic Facilities of a Virtio Device / Virtqueues / The Virtqueue Descriptor Table / Indirect Descriptors":
        "split/indirect",
    "Basic Facilities of a Virtio Device / Virtqueues / The Virtqueue Available Ring": "split/avail",
    "Basic Facilities of a Virtio Device / Virtqueues / Used Buffer Notification Suppression": "split/used-event",
    "Basic Facilities of a Virtio Device / Virtqueues / The Virtqueue Used Ring": "split/used",
    "Basic Facilities of a Virtio Device / Virtqueues / Available Buffer Notification Suppression":
        "split/avail-event",
    "Basic Facilities of a Virtio Device / Virtqueues / Supplying Buffers to The Device / Updating idx":
        "split/avail-idx",
    "Basic Facilities of a Virtio Device / Virtqueues / Supplying Buffers to The Device / Notifying The Device":
        "split/notify",
    # transport-pci.tex
    "Virtio Transport Options / Virtio Over PCI Bus": "pci",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI Device Discovery": "pci/discovery",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI Device Discovery / "
    "Legacy Interfaces: A Note on PCI Device Discovery": "pci/discovery/legacy",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI Device Layout": "pci/layout",
    "Virtio Transport Options / Virtio Over PCI Bus / Virtio Structure PCI Capabilities": "pci/caps",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI Device Layout / Common configuration structure layout":
        "pci/common-cfg",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI Device Layout / Notification capability":
        "pci/notify-cap",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI Device Layout / ISR status capability": "pci/isr",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI Device Layout / Device-specific configuration":
        "pci/device-cfg",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI Device Layout / Shared memory capability":
        "pci/shm-cap",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI Device Layout / Vendor data capability":
        "pci/vendor-cap",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI Device Layout / PCI configuration access capability":
        "pci/pci-cfg",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI Device Layout / "
    "Legacy Interfaces: A Note on PCI Device Layout": "pci/layout/legacy",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI-specific Initialization And Device Operation / "
    "Device Initialization / Non-transitional Device With Legacy Driver": "pci/legacy-driver",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI-specific Initialization And Device Operation / "
    "Device Initialization / Virtio Device Configuration Layout Detection / "
    "Legacy Interface: A Note on Device Layout Detection": "pci/layout-detection/legacy",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI-specific Initialization And Device Operation / "
    "Device Initialization / MSI-X Vector Configuration": "pci/msix",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI-specific Initialization And Device Operation / "
    "Available Buffer Notifications": "pci/avail-notify",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI-specific Initialization And Device Operation / "
    "Used Buffer Notifications": "pci/used-notify",
    "Virtio Transport Options / Virtio Over PCI Bus / PCI-specific Initialization And Device Operation / "
    "Notification of Device Configuration Changes": "pci/config-notify",
    # device types
    "Device Types / Entropy Device / Device Operation": "rng/operation",
    "Device Types / GPU Device / Device Initialization": "gpu/init",
    "Device Types / GPU Device / Device Operation / Device Operation: Command lifecycle and fencing": "gpu/fencing",
    "Device Types / GPU Device / Device Operation / Device Operation: controlq": "gpu/controlq",
    "Device Types / GPU Device / Device Operation / Device Operation: controlq (3d)": "gpu/controlq-3d",
}

SIDE_PREFIX = {"device": "dev", "driver": "drv"}
ABSOLUTE = ("MUST NOT", "MUST", "SHALL NOT", "SHALL", "REQUIRED")
RECOMMENDED = ("SHOULD NOT", "SHOULD", "NOT RECOMMENDED", "RECOMMENDED")
KEYWORD_RE = re.compile(r"\b(MUST\s+(?:NOT|not)|MUST|SHALL\s+NOT|SHALL|REQUIRED|SHOULD\s+NOT|SHOULD|"
                        r"NOT\s+RECOMMENDED|RECOMMENDED|MAY|OPTIONAL)\b")
HAND_FIELDS = ("summary", "applies", "reason", "implemented_in", "tests")
LEVELS = {"chapter": 0, "section": 1, "subsection": 2, "subsubsection": 3, "paragraph": 4, "subparagraph": 5}
LIST_ENVS = {"itemize", "enumerate", "description", "itemize*", "enumerate*", "description*"}
RAW_ENVS = {"lstlisting", "tabular", "tabularx", "longtable"}
SKIP_ENVS = {"note"}
ABBREVIATIONS = ("e.g.", "i.e.", "ie.", "etc.", "vs.", "cf.")

# ------------------------------------------------------------------------------------------------------------------
# LaTeX scanning
# ------------------------------------------------------------------------------------------------------------------


def strip_comments(text: str) -> str:
    """Blank ``%`` comments (not ``\\%``), keeping every offset and line number."""
    out = []
    for line in text.split("\n"):
        m = re.search(r"(?<!\\)%", line)
        out.append(line if m is None else line[: m.start()] + " " * (len(line) - m.start()))
    return "\n".join(out)


def read_group(text: str, pos: int) -> tuple[str, int]:
    """The balanced ``{...}`` group starting at ``pos`` (after optional whitespace): (content, end offset)."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos >= len(text) or text[pos] != "{":
        raise ValueError(f"expected '{{' at offset {pos}")
    depth = 0
    for i in range(pos, len(text)):
        c = text[i]
        if c == "\\":
            continue
        if c == "{" and text[i - 1] != "\\":
            depth += 1
        elif c == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[pos + 1 : i], i + 1
    raise ValueError(f"unbalanced group at offset {pos}")


def clean_title(title: str) -> str:
    """Heading text without markup: ``\\field{device status}`` -> ``device status``; whitespace collapsed."""
    t = re.sub(r"\\(?:field|emph|textbf|texttt)\{([^{}]*)\}", r"\1", title)
    t = re.sub(r"\\_", "_", t)
    return " ".join(t.split())


def norm_label(label: str) -> str:
    return " ".join(label.split())


@dataclass
class Heading:
    """A sectioning command (plain or normative) in one file."""

    file: str
    start: int
    end: int  # after the heading and any labels right after it
    level: int
    title: str
    kind: str  # "plain" | "device" | "driver"
    label: str  # the normative label for normative headings, the sec: label (without prefix) otherwise
    number: str = ""  # section number in the built document (set by SpecTree)
    parents: str = ""  # title path of the enclosing headings in the built document (set by SpecTree)


HEADING_RE = re.compile(
    r"\\(?:(?P<norm>devicenormative|drivernormative)\s*\{\s*\\(?P<nlevel>[a-z]+)\s*\}"
    r"|(?P<conf>conformance)\s*\{\s*\\(?P<clevel>[a-z]+)\s*\}"
    r"|(?P<plain>chapter|section|subsection|subsubsection|paragraph|subparagraph)\*?\s*(?=\{))"
)
LABEL_RE = re.compile(r"\s*\\label\s*(?=\{)")
INPUT_RE = re.compile(r"\\input\s*\{([^}]*)\}")


def _labels_after(text: str, pos: int) -> tuple[list[str], int]:
    labels: list[str] = []
    while True:
        m = LABEL_RE.match(text, pos)
        if not m:
            return labels, pos
        label, pos = read_group(text, m.end())
        labels.append(norm_label(label))


def scan_headings(file: str, text: str) -> list[Heading]:
    """Every heading of ``text`` (comments already blanked), in order."""
    out: list[Heading] = []
    for m in HEADING_RE.finditer(text):
        if m.group("norm"):
            level_name = m.group("nlevel")
            title, pos = read_group(text, m.end())
            label, pos = read_group(text, pos)
            kind = "device" if m.group("norm") == "devicenormative" else "driver"
            prefix = "Device Requirements: " if kind == "device" else "Driver Requirements: "
            _, pos = _labels_after(text, pos)
            out.append(Heading(file, m.start(), pos, LEVELS[level_name], prefix + clean_title(title), kind,
                               norm_label(label)))
            continue
        if m.group("conf"):
            title, pos = read_group(text, m.end())
            out.append(Heading(file, m.start(), pos, LEVELS[m.group("clevel")], clean_title(title), "plain", ""))
            continue
        title, pos = read_group(text, m.end())
        labels, pos = _labels_after(text, pos)
        ctitle = clean_title(title)
        kind, label = "plain", ""
        for lab in labels:
            if lab.startswith("sec:"):
                label = lab[4:]
        # A plain heading titled "Device Requirements: ..." with a normative label is a requirement block too.
        for side, prefix in (("device", "devicenormative:"), ("driver", "drivernormative:")):
            if ctitle.startswith(f"{side.capitalize()} Requirements:"):
                kind = side
                for lab in labels:
                    if lab.startswith(prefix):
                        label = lab[len(prefix) :]
        out.append(Heading(file, m.start(), pos, LEVELS[m.group("plain")], ctitle, kind, label))
    return out


class SpecTree:
    """The spec's files, their headings and section numbers (computed by walking the document from the root)."""

    def __init__(self, spec_dir: Path) -> None:
        self.dir = spec_dir
        self.texts: dict[str, str] = {}
        self.headings: dict[str, list[Heading]] = {}
        self._number()

    def text(self, file: str) -> str:
        if file not in self.texts:
            self.texts[file] = strip_comments((self.dir / file).read_text(encoding="utf-8"))
            self.headings[file] = scan_headings(file, self.texts[file])
        return self.texts[file]

    def _number(self) -> None:
        counters = [0] * 6
        appendix = False
        stack: list[Heading] = []

        def walk(file: str, depth: int) -> None:
            nonlocal appendix
            if depth > 20:
                raise ValueError("\\input nesting too deep")
            text = self.text(file)
            events: list[tuple[int, object]] = [(h.start, h) for h in self.headings[file]]
            events += [(m.start(), m.group(1).strip()) for m in INPUT_RE.finditer(text)]
            events += [(m.start(), "\\appendix") for m in re.finditer(r"\\appendix\b", text)]
            for _, ev in sorted(events, key=lambda e: e[0]):
                if isinstance(ev, Heading):
                    while stack and stack[-1].level >= ev.level:
                        stack.pop()
                    ev.parents = " / ".join(h.title for h in stack)
                    stack.append(ev)
                    counters[ev.level] += 1
                    for i in range(ev.level + 1, 6):
                        counters[i] = 0
                    parts = [str(c) for c in counters[: ev.level + 1]]
                    if appendix:
                        parts[0] = chr(ord("A") + counters[0] - 1)
                    ev.number = ".".join(parts)
                elif ev == "\\appendix":
                    appendix = True
                    counters[:] = [0] * 6
                else:
                    assert isinstance(ev, str)
                    name = ev if ev.endswith(".tex") else ev + ".tex"
                    if (self.dir / name).is_file():
                        walk(name, depth + 1)

        walk(ROOT_FILE, 0)

    def line_of(self, file: str, offset: int) -> int:
        return self.text(file).count("\n", 0, offset) + 1


# ------------------------------------------------------------------------------------------------------------------
# Blocks, sentences, statements
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class Block:
    """A requirement block or a legacy section: where statements are looked for."""

    file: str
    heading: Heading
    start: int  # body start
    end: int  # body end
    side: str  # "device" | "driver" | "legacy"
    label: str
    section: str  # title path of the requirement's topic (parent headings + the block's topic, or the legacy heading)
    clause: str  # section number of the block heading


@dataclass
class Sentence:
    start: int
    end: int
    text: str  # source text with labels blanked
    has_keyword: bool
    attached: list[str] = field(default_factory=list)


@dataclass
class Statement:
    """One extracted statement (the spec text is only kept in memory, for ``--dump`` and the summary check)."""

    id: str
    side: str
    level: str
    section: str
    clause: str
    file: str
    line: int
    digest: str
    text: str


@dataclass
class Node:
    """A piece of a block body: plain text, an environment, or a list item."""

    kind: str  # "text" | "env" | "item"
    start: int
    end: int
    name: str = ""
    children: list[Node] = field(default_factory=list)


TOKEN_RE = re.compile(r"\\begin\s*\{([^}]*)\}|\\end\s*\{([^}]*)\}|\\item\b(?:\s*\[[^\]]*\])?")


def parse_body(text: str, start: int, end: int) -> list[Node]:
    """Tree of text / environments / items of ``text[start:end]``."""
    root = Node("env", start, end, "body")
    stack = [root]
    pos = start
    while pos < end:
        m = TOKEN_RE.search(text, pos, end)
        if m is None:
            break
        top = stack[-1]
        if m.start() > pos:
            top.children.append(Node("text", pos, m.start()))
        if m.group(1) is not None:
            name = m.group(1).strip()
            if name in RAW_ENVS or name in SKIP_ENVS:
                close = re.compile(r"\\end\s*\{" + re.escape(name) + r"\}").search(text, m.end(), end)
                stop = close.end() if close else end
                top.children.append(Node("env", m.start(), stop, name))
                pos = stop
                continue
            env = Node("env", m.start(), m.end(), name)
            top.children.append(env)
            stack.append(env)
        elif m.group(2) is not None:
            while len(stack) > 1 and stack[-1].kind == "item":
                stack.pop().end = m.start()
            if len(stack) > 1:
                stack.pop().end = m.end()
        else:
            while stack[-1].kind == "item":
                stack.pop().end = m.start()
            item = Node("item", m.end(), m.end())
            stack[-1].children.append(item)
            stack.append(item)
        pos = m.end()
    if pos < end:
        stack[-1].children.append(Node("text", pos, end))
    return root.children


SENTENCE_END_RE = re.compile(r"[.!?](?:''|\"|\))*(?=\s+[A-Z\\]|\s*$)")


def split_sentences(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Sentence spans of ``text[start:end]`` (offsets into ``text``), leading/trailing whitespace trimmed."""
    for a, b in _paragraphs(text, start, end):
        yield from _sentences(text, a, b)


def _paragraphs(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """A blank line ends a sentence even without a full stop (the spec has a few)."""
    cut = start
    for m in re.finditer(r"\n[ \t]*\n", text[start:end]):
        yield cut, start + m.start()
        cut = start + m.end()
    yield cut, end


def _sentences(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    seg = text[start:end]
    cut = 0
    for m in SENTENCE_END_RE.finditer(seg):
        word = seg[cut : m.end()].split()[-1] if seg[cut : m.end()].split() else ""
        if word.lower().endswith(ABBREVIATIONS) and len(word) <= 5:
            continue
        yield from _trimmed(text, start + cut, start + m.end())
        cut = m.end()
    yield from _trimmed(text, start + cut, end)


def _trimmed(text: str, a: int, b: int) -> Iterator[tuple[int, int]]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    if b > a:
        yield a, b


def keywords(text: str) -> list[str]:
    return [" ".join(k.upper().split()) for k in KEYWORD_RE.findall(" ".join(text.split()))]


def is_statement(text: str) -> bool:
    return any(k in ABSOLUTE or k in RECOMMENDED for k in keywords(text))


def level_of(text: str) -> str:
    kws = keywords(text)
    for tier in (ABSOLUTE, RECOMMENDED):
        for k in kws:
            if k in tier:
                return k
    raise ValueError("no requirement keyword")


def collect(text: str, nodes: list[Node]) -> list[Sentence]:
    """Statements (sentences with a keyword, plus what they carry) of a node sequence, in order."""
    out: list[Sentence] = []
    units: list[Sentence | Node] = []
    for n in nodes:
        if n.kind == "text":
            for a, b in split_sentences(text, n.start, n.end):
                units.append(Sentence(a, b, text[a:b], is_statement(text[a:b])))
        elif n.kind == "env" and n.name in SKIP_ENVS:
            continue
        else:
            units.append(n)
    last: Sentence | None = None  # the sentence a following list/listing belongs to
    for u in units:
        if isinstance(u, Sentence):
            if u.has_keyword:
                out.append(u)
            last = u
            continue
        if u.kind == "env" and u.name in RAW_ENVS:
            if last is not None and last.has_keyword:
                last.attached.append(text[u.start : u.end])
            continue
        if u.kind == "env" and u.name in LIST_ENVS:
            # A list continues the sentence in front of it unless that sentence ended ("... that is" / "... so:").
            owner = last if last is not None and last.has_keyword and not last.text.rstrip().endswith(
                (".", "!", "?")) else None
            for item in u.children:
                if item.kind != "item":
                    continue
                out.extend(_collect_item(text, item, owner))
            last = None
    return out


def _collect_item(text: str, item: Node, owner: Sentence | None) -> list[Sentence]:
    found = collect(text, item.children)
    if owner is not None:
        for s in _plain_sentences(text, item.children):
            owner.attached.append(s)
    return found


def _plain_sentences(text: str, nodes: list[Node]) -> Iterator[str]:
    """Keyword-free sentences (and listings) inside list items, recursively: the content of an owning statement."""
    for n in nodes:
        if n.kind == "text":
            for a, b in split_sentences(text, n.start, n.end):
                if not is_statement(text[a:b]):
                    yield text[a:b]
        elif n.kind == "env" and n.name in RAW_ENVS:
            yield text[n.start : n.end]
        elif n.kind in ("env", "item") and n.name not in SKIP_ENVS:
            yield from _plain_sentences(text, n.children)


def blank_labels(text: str) -> str:
    """``\\label{...}`` anchors are not prose: blank them (offsets kept)."""
    return re.sub(r"\\label\s*\{[^{}]*\}", lambda m: " " * len(m.group(0)), text)


def digest_of(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()[:16]


def legacy_sides(sentence: str) -> list[str]:
    """Who a legacy-section sentence binds: the subject in front of its first keyword, plus any later keyword
    directly preceded by "device(s)"/"driver(s)". "devices and drivers MUST" binds both."""
    flat = " ".join(sentence.split())
    ms = [m for m in KEYWORD_RE.finditer(flat) if is_statement(m.group(0))]
    if not ms:
        return []
    head = flat[: ms[0].start()].split(",")[-1].lower()
    sides = [s for s in ("device", "driver") if re.search(rf"\b{s}s?\b", head)]
    for m in ms[1:]:
        prev = flat[: m.start()].rstrip().lower()
        for s in ("device", "driver"):
            if re.search(rf"\b{s}s?$", prev) and s not in sides:
                sides.append(s)
    return sides or ["device"]


def blocks_of(tree: SpecTree, file: str) -> list[Block]:
    """Requirement blocks and legacy sections of one file."""
    text = tree.text(file)
    hs = tree.headings[file]
    stops = sorted([h.start for h in hs] + [m.start() for m in INPUT_RE.finditer(text)] + [len(text)])
    out: list[Block] = []
    for h in hs:
        end = next(s for s in stops if s > h.start)
        if h.kind in ("device", "driver"):
            topic = h.title.split(":", 1)[1].strip()
            section = h.parents if h.parents.endswith(f"/ {topic}") or h.parents == topic else f"{h.parents} / {topic}"
            out.append(Block(file, h, h.end, end, h.kind, h.label, section, h.number))
        elif re.match(r"legacy interfaces?:", h.title, re.IGNORECASE):
            section = f"{h.parents} / {h.title}" if h.parents else h.title
            out.append(Block(file, h, h.end, end, "legacy", h.label, section, h.number))
    return out


def slug_for(label: str, warnings: list[str]) -> str:
    if label in SLUGS:
        return SLUGS[label]
    auto = "/".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in label.split(" / ")[-2:])
    warnings.append(f"no slug for block label {label!r}; using {auto!r}")
    return auto


def extract(spec_dir: Path) -> tuple[list[Statement], list[str]]:
    """All statements of :data:`SCOPE`, in document order, and warnings."""
    tree = SpecTree(spec_dir)
    warnings: list[str] = []
    out: list[Statement] = []
    ordinal: Counter[str] = Counter()
    for file in SCOPE:
        text = tree.text(file)
        body = blank_labels(text)
        for block in blocks_of(tree, file):
            found = collect(body, parse_body(body, block.start, block.end))
            slug = slug_for(block.label, warnings) if found else ""
            for s in found:
                full = " ".join([s.text, *s.attached])
                sides = legacy_sides(s.text) if block.side == "legacy" else [block.side]
                for side in sides:
                    key = f"{SIDE_PREFIX[side]}:{slug}"
                    ordinal[key] += 1
                    out.append(Statement(
                        id=f"{key}#{ordinal[key]}", side=side, level=level_of(s.text), section=block.section,
                        clause=block.clause, file=file, line=tree.line_of(file, s.start), digest=digest_of(full),
                        text=" ".join(full.split()),
                    ))
    return out, warnings


def loose_sentences(spec_dir: Path) -> Iterator[tuple[str, int, str]]:
    """Keyword sentences of the in-scope files that lie outside every block (for review, never stored)."""
    tree = SpecTree(spec_dir)
    for file in SCOPE:
        text = blank_labels(tree.text(file))
        covered = [(b.start, b.end) for b in blocks_of(tree, file)]
        hs = tree.headings[file]
        bounds = sorted({0, len(text), *(h.start for h in hs), *(h.end for h in hs), *(x for c in covered for x in c)})
        for a, b in itertools.pairwise(bounds):
            if any(ca <= a and b <= cb for ca, cb in covered) or any(h.start <= a < h.end for h in hs):
                continue
            for s in collect(text, parse_body(text, a, b)):
                yield file, tree.line_of(file, s.start), " ".join(s.text.split())


# ------------------------------------------------------------------------------------------------------------------
# The inventory file
# ------------------------------------------------------------------------------------------------------------------

HEADER = """\
# pyvirtio's inventory of the virtio normative statements it implements (issue 9).
#
# GENERATED by scripts/extract_normative.py from the virtio spec LaTeX sources, then hand-filled. Re-run with
#   scripts/extract_normative.py SPEC_DIR --update pyvirtio/spec/normative.toml
# after checking out a new spec: generated fields are refreshed, hand-filled fields are kept.
#
# One [[statement]] per normative sentence (MUST, MUST NOT, SHALL, REQUIRED, SHOULD, SHOULD NOT, RECOMMENDED) of
# the device/driver requirement blocks and the "Legacy Interface" sections of content.tex, split-ring.tex,
# transport-pci.tex, device-types/entropy and device-types/gpu. The spec's own wording is NOT stored here: the
# summary is pyvirtio's paraphrase; digest identifies the exact sentence.
#
# id        "<side>:<block>#<n>": side dev|drv, block = short slug of the requirement block's label
#           (".../legacy" for a Legacy Interface section), n = 1-based ordinal of that side's statements in the block.
# side      device | driver (who the block binds; a legacy sentence binding both appears once per side)
# level     strongest keyword of the sentence (absolute MUST-family first, else SHOULD-family)
# clause    section number of the requirement heading at that spec revision
# section   title path of the topic (parent headings plus the block's topic); coverage is counted per section
# file/line spec file (relative to the spec checkout) and 1-based line where the sentence starts
# digest    sha256, first 16 hex digits, of the sentence's LaTeX source with whitespace runs collapsed
#
# Hand-filled: summary (paraphrase, <= ~110 chars), applies (false needs a reason), implemented_in
# ("module:qualname" of the code that honours it), tests ("tests/path.py::test_name" naming the id).
"""


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


RECORD_KEYS = ("id", "side", "level", "clause", "section", "file", "line", "digest", *HAND_FIELDS)
#: Fields written by scripts/sync_normative.py from the code tags and the test markers.
REFERENCE_KEYS = ("implemented_in", "tests")


def render(meta: dict[str, str], records: list[dict[str, object]]) -> str:
    lines = [HEADER, "[spec]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in meta.items()]
    for r in records:
        lines.append("")
        lines.append("[[statement]]")
        for k in RECORD_KEYS:
            v = r[k]
            if k in REFERENCE_KEYS and isinstance(v, list | tuple):  # the format scripts/sync_normative.py writes
                lines.append(format_field(k, [str(x) for x in v]))
            else:
                lines.append(f"{k} = {toml_value(v)}")
    return "\n".join(lines) + "\n"


def merge(extracted: list[Statement], existing: list[dict[str, object]]) -> tuple[list[dict[str, object]], list[str]]:
    """New records with the hand-filled fields of ``existing`` carried over; plus a change log."""
    by_id = {str(r["id"]): r for r in existing}
    by_digest: dict[str, list[dict[str, object]]] = {}
    for r in existing:
        by_digest.setdefault(str(r["digest"]), []).append(r)
    log: list[str] = []
    out: list[dict[str, object]] = []
    used: set[str] = set()
    for s in extracted:
        old = by_id.get(s.id)
        if old is not None and old["digest"] != s.digest:
            moved = [r for r in by_digest.get(s.digest, []) if str(r["id"]) not in used]
            if moved:
                log.append(f"MOVED   {moved[0]['id']} -> {s.id}")
                old = moved[0]
            else:
                log.append(f"CHANGED {s.id} ({s.file}:{s.line}): spec text changed, review summary/applies")
        elif old is None:
            moved = [r for r in by_digest.get(s.digest, []) if str(r["id"]) not in used]
            if moved:
                log.append(f"MOVED   {moved[0]['id']} -> {s.id}")
                old = moved[0]
            else:
                log.append(f"NEW     {s.id} ({s.file}:{s.line})")
        if old is not None:
            used.add(str(old["id"]))
        rec: dict[str, object] = {
            "id": s.id, "side": s.side, "level": s.level, "clause": s.clause, "section": s.section,
            "file": s.file, "line": s.line, "digest": s.digest,
            "summary": "", "applies": True, "reason": "", "implemented_in": [], "tests": [],
        }
        if old is not None:
            for k in HAND_FIELDS:
                if k in old:
                    rec[k] = old[k]
        out.append(rec)
    for r in existing:
        if str(r["id"]) not in used and str(r["id"]) not in {s.id for s in extracted}:
            log.append(f"REMOVED {r['id']}: no longer in the spec (tests naming it must be updated)")
    return out, log


def copied_runs(summary: str, text: str, words: int = 6) -> str | None:
    """A run of ``words`` consecutive words of ``summary`` that also occurs in the spec sentence, if any."""
    def toks(s: str) -> list[str]:
        return re.findall(r"[a-z0-9_]+", re.sub(r"\\[a-z]+\{([^{}]*)\}", r"\1", s.lower()))

    src = " " + " ".join(toks(text)) + " "
    sw = toks(summary)
    for i in range(len(sw) - words + 1):
        run = " ".join(sw[i : i + words])
        if f" {run} " in src:
            return run
    return None


def spec_commit(spec_dir: Path) -> str:
    try:
        res = subprocess.run(["git", "-C", str(spec_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=False)
    except OSError:
        return ""
    return res.stdout.strip() if res.returncode == 0 else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("spec_dir", type=Path, help="checkout of the virtio spec LaTeX sources")
    ap.add_argument("--update", type=Path, metavar="TOML", help="write/refresh this inventory file")
    ap.add_argument("--commit", default="", help="spec commit to record (default: git HEAD of SPEC_DIR, or kept)")
    ap.add_argument("--dump", action="store_true", help="print every statement with its spec text (JSON lines)")
    ap.add_argument("--loose", action="store_true", help="print keyword sentences outside requirement blocks")
    args = ap.parse_args(argv)
    spec_dir: Path = args.spec_dir
    if not (spec_dir / ROOT_FILE).is_file():
        print(f"error: {spec_dir} is not a virtio spec checkout (no {ROOT_FILE})", file=sys.stderr)
        return 2
    statements, warnings = extract(spec_dir)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.loose:
        for file, line, text in loose_sentences(spec_dir):
            print(f"{file}:{line}: {text}")
        return 0
    if args.dump:
        for s in statements:
            print(json.dumps(s.__dict__, ensure_ascii=False))
        return 0
    if args.update is None:
        per: Counter[tuple[str, str]] = Counter((s.clause, s.id.split("#")[0]) for s in statements)
        for (clause, block), n in per.items():
            print(f"{clause:<14} {block:<34} {n:3}")
        print(f"{len(statements)} statements")
        return 0
    path: Path = args.update
    existing: list[dict[str, object]] = []
    meta = {"revision": "", "commit": "", "repository": "https://github.com/oasis-tcs/virtio-spec"}
    if path.exists():
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        existing = list(data.get("statement", []))
        meta.update({k: str(v) for k, v in data.get("spec", {}).items()})
    rev_file = spec_dir / "REVISION"
    if rev_file.is_file():
        meta["revision"] = rev_file.read_text(encoding="utf-8").strip()
    meta["commit"] = args.commit or spec_commit(spec_dir) or meta["commit"]
    records, log = merge(statements, existing)
    texts = {s.id: s.text for s in statements}
    for r in records:
        run = copied_runs(str(r["summary"]), texts[str(r["id"])])
        if run:
            log.append(f"COPY?   {r['id']}: summary repeats the spec's words {run!r}: paraphrase it")
    path.write_text(render(meta, records), encoding="utf-8")
    for entry in log:
        print(entry)
    print(f"{path}: {len(records)} statements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
