"""Bad input on the command line (issue 9 defects 12 and 13, and every option of every command).

The CLI's policy (pyvirtio/cli/common.py): bad input is one line ``pyvirtio: error: ...`` on stderr naming the
problem and exit status 2, never a traceback; exit status 1 is only a result (``vm compare`` found a
difference, ``vm matrix`` could not run a cell). The commands' real work (a matrix, a VM) is stubbed here: what
is under test is what they do with their input.
"""

from __future__ import annotations

import copy
import errno
import importlib
import os
import pathlib
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtio.cli import main
from pyvirtio.cli.common import SIZE_UNITS, to_size
from pyvirtio.fidelity import model_cell
from pyvirtio.pm.config import RESOURCE_SIZE_MAX, SEED_MAX
from pyvirtio.report import CellResult, Report, Source
from pyvirtio.vm.errors import ProvisionError

pm_cli = importlib.import_module("pyvirtio.cli.pm")  # the modules (pyvirtio.cli.pm is the command group)
vm_cli = importlib.import_module("pyvirtio.cli.vm")
gpu_cli = importlib.import_module("pyvirtio.cli.gpu")
compare_cli = importlib.import_module("pyvirtio.cli.compare")
serve_cli = importlib.import_module("pyvirtio.cli.serve")
uml_cli = importlib.import_module("pyvirtio.cli.uml")


def one_line_error(r: Result, *needles: str) -> str:
    """``r`` is the policy's error: status 2, no traceback, exactly one line on stderr holding ``needles``."""
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    assert r.stderr.startswith("pyvirtio: error: ") and r.stderr.count("\n") == 1, r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    return str(r.stderr)


# -- the commands' work, stubbed ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def canned() -> CellResult:
    return model_cell("S3", "q35")


class FakeAssets:
    """What ``provision`` returns, as far as the CLI looks at it."""

    root = Path("guest")
    modules = ("virtio_gpu",)
    gpu_modules = (("s4-replay", Path("m/initrd [red]x[/].img")),)

    def versions(self) -> dict[str, str]:
        return {"qemu": "7.2 [red]x[/]"}


@pytest.fixture
def stubs(monkeypatch: pytest.MonkeyPatch, canned: CellResult) -> Iterator[None]:
    install_stubs(monkeypatch, canned)
    yield


def install_stubs(monkeypatch: pytest.MonkeyPatch, canned: CellResult) -> None:
    real = copy.deepcopy(canned)
    real.source = Source.REAL_VM

    def run_cell(*_: object, **__: object) -> CellResult:
        return copy.deepcopy(canned)

    def run_matrix(_rows: object, _sleeps: object, _cfg: object, out_dir: Path, **__: object) -> Report:
        report = Report(cells=[copy.deepcopy(canned)])
        report.write(out_dir / "report.json")
        return report

    def vm_run_cell(*_: object, **__: object) -> CellResult:
        return copy.deepcopy(real)

    def vm_run_matrix(*_: object, **__: object) -> Report:
        return Report(cells=[copy.deepcopy(real)])

    def provision(*_: object, **__: object) -> FakeAssets:
        return FakeAssets()

    monkeypatch.setattr(pm_cli, "run_cell", run_cell)
    monkeypatch.setattr(pm_cli, "run_matrix", run_matrix)
    monkeypatch.setattr(gpu_cli, "run_demo", lambda *_: [])
    monkeypatch.setattr(vm_cli, "provision", provision)
    monkeypatch.setattr(vm_cli, "run_cell", vm_run_cell)
    monkeypatch.setattr(vm_cli, "run_matrix", vm_run_matrix)
    monkeypatch.setattr(compare_cli, "model_cell", lambda *_, **__: copy.deepcopy(canned))
    monkeypatch.setattr("pyvirtio.vm.provisioning.provision", provision)
    monkeypatch.setattr("pyvirtio.vm.private_stack.provision_stack", provision)
    monkeypatch.setattr("pyvirtio.vm.scenario.run_cell", vm_run_cell)
    monkeypatch.setattr(serve_cli, "serve_device", lambda *_, **__: [])  # serving would wait for a front-end

    def no_uml(*_: object, **__: object) -> object:  # building or booting the UML kernel is the realvm tests' job
        raise ProvisionError("the UML kernel is not provisioned here (stub)")

    monkeypatch.setattr(uml_cli, "assets_for", no_uml)
    monkeypatch.setattr(vm_cli, "provision_uml", no_uml)


# -- defect 12: sizes and numbers ---------------------------------------------------------------------------------

BAD_SIZES = ["1e400", "inf", "-inf", "nan", "-1", "1e30", "0", "0.5", "K", "", "1e3", "0x10", "257M", "1G",
             "99999999999999999999999", "1" * 5000, "Infinity", "½", "٣", "1KK", "--", " "]


@pytest.mark.parametrize("command", [["pm", "run", "--profile", "baseline", "--sleep", "S3"],
                                     ["pm", "matrix", "--profile", "baseline"]])
@pytest.mark.parametrize("size", BAD_SIZES, ids=[ascii(s)[:24] for s in BAD_SIZES])
def test_resource_size_is_a_bounded_int_or_one_line(stubs: None, tmp_path: Path, command: list[str],
                                                    size: str) -> None:
    """Issue 9 defect 12: ``--resource-size 1e400`` (inf, nan, -1, 1e30, ...) was an OverflowError traceback;
    now every value is a whole number of bytes in 1..256M or one line naming the option, exit status 2."""
    r = CliRunner().invoke(main, [*command, "--out", str(tmp_path / "o"), "--resource-size", size])
    one_line_error(r, "--resource-size")


@pytest.mark.parametrize(("option", "value"), [("--seed", "-1"), ("--seed", str(SEED_MAX + 1)),
                                               ("--seed", "1e400"), ("--resources", "4097"),
                                               ("--resources", "-1"), ("--scanouts", "0"), ("--scanouts", "nan")])
def test_number_options_are_bounded(stubs: None, tmp_path: Path, option: str, value: str) -> None:
    """Issue 9 defect 12: every number option is bounded (``--seed -1`` silently broke the entropy device, which
    hashes the seed as 8 bytes): one line naming the option, exit status 2."""
    r = CliRunner().invoke(main, ["pm", "run", "--profile", "baseline", "--sleep", "S3", "--out",
                                  str(tmp_path / "o"), option, value])
    one_line_error(r, option)


@pytest.mark.parametrize(("text", "want"), [("256K", 256 << 10), ("4M", 4 << 20), ("1.5k", 1536), (".5K", 512),
                                            ("256MB", 256 << 20), ("64KiB", 64 << 10), (" 7 ", 7), ("1.", 1)])
def test_sizes_that_parse(text: str, want: int) -> None:
    assert to_size(text, RESOURCE_SIZE_MAX) == want


@given(text=st.one_of(st.text(max_size=30), st.from_regex(r"[0-9]{0,14}(\.[0-9]{0,14})?[kKmMgG]?(i?[bB])?",
                                                          fullmatch=True)),
       limit=st.sampled_from([1, 4096, RESOURCE_SIZE_MAX, 1 << 40]))
def test_any_text_is_a_bounded_size_or_a_value_error(text: str, limit: int) -> None:
    """Issue 9 defect 12 (property): any text is an int in 1..limit, exactly floor(number x unit), or a
    ValueError; never OverflowError or another exception."""
    try:
        n = to_size(text, limit)
    except ValueError as e:
        assert "\n" not in str(e)
        return
    assert type(n) is int and 1 <= n <= limit
    m = re.fullmatch(r"([0-9.]+)([kmg]?)(i?b)?", text.strip().lower())
    assert m is not None
    assert n == int(Decimal(m[1]) * SIZE_UNITS.get(m[2], 1))


# -- defect 13: output paths that cannot be used ------------------------------------------------------------------


def _commands(real: Path) -> dict[str, list[str]]:
    return {
        "pm run": ["pm", "run", "--profile", "baseline", "--sleep", "S3", "--out"],
        "pm matrix": ["pm", "matrix", "--profile", "baseline", "--out"],
        "gpu demo": ["gpu", "demo", "--out"],
        "vm run": ["vm", "run", "--sleep", "S3", "--out"],
        "vm matrix": ["vm", "matrix", "--out"],
        "vm compare": ["vm", "compare", "--sleep", "S3", "--machine", "q35", "--real", str(real), "--out"],
        "vm run --cache": ["vm", "run", "--sleep", "S3", "--out", str(real.parent / "ok"), "--cache"],
        "vm provision --cache": ["vm", "provision", "--cache"],
    }


@pytest.fixture
def real_report(tmp_path: Path, canned: CellResult) -> Path:
    cell = copy.deepcopy(canned)
    cell.source = Source.REAL_VM
    p = tmp_path / "real.json"
    Report(cells=[cell]).write(p)
    return p


def _denied(monkeypatch: pytest.MonkeyPatch, where: Path) -> None:
    """Make ``where`` unwritable: chmod when not root, else a mkdir that fails there as EACCES would."""
    if os.geteuid() != 0:
        where.chmod(0o500)
        return
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.parent == where:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)


@pytest.mark.parametrize("obstacle", ["path under a file", "no permission", "a file in the way"])
@pytest.mark.parametrize("command", sorted(_commands(Path("x"))))
def test_unusable_output_path_is_one_line(stubs: None, tmp_path: Path, real_report: Path,
                                          monkeypatch: pytest.MonkeyPatch, command: str, obstacle: str) -> None:
    """Issue 9 defect 13: an ``--out`` (or ``--cache``) that cannot be created was an OSError traceback in
    ``pm run``, ``pm matrix``, ``gpu demo`` and the vm commands; now it is one line naming the path and the
    reason, exit status 2, before any work is done."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    if obstacle == "path under a file":
        target, reason = blocker / "out", "Not a directory"
    elif obstacle == "no permission":
        target, reason = locked / "out", "Permission denied"
        _denied(monkeypatch, locked)
    else:
        target, reason = blocker, "is a file"
    r = CliRunner().invoke(main, [*_commands(real_report)[command], str(target)])
    one_line_error(r, str(target), reason)


def test_a_write_that_fails_late_is_one_line_naming_the_path(stubs: None, tmp_path: Path) -> None:
    """Issue 9 defect 13: an OSError after the work (here report.json is a directory) is the policy's one line
    naming the path and the reason, not a traceback."""
    out = tmp_path / "o"
    (out / "report.json").mkdir(parents=True)
    r = CliRunner().invoke(main, ["pm", "run", "--profile", "baseline", "--sleep", "S3", "--out", str(out)])
    one_line_error(r, str(out / "report.json"), "Is a directory")


def test_strings_from_outside_are_printed_as_text(stubs: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  canned: CellResult) -> None:
    """Issue 9 defect 14: notes a guest wrote, image paths, versions and the ``--out`` path are printed as
    they are, never as rich markup (an unbalanced ``[/x]`` would even raise)."""
    hostile = "[bold red]pwn[/] [/x]"
    cell = copy.deepcopy(canned)
    cell.source, cell.notes, cell.images = Source.REAL_VM, [hostile], {"before": f"{hostile}.png"}
    cell.devices["gpu"].name = hostile
    monkeypatch.setattr(vm_cli, "run_cell", lambda *_, **__: cell)
    out = tmp_path / "[red]o[/]"
    r = CliRunner().invoke(main, ["vm", "run", "--sleep", "S3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert hostile in r.stdout and f"before: {hostile}.png" in r.stdout and str(out / "report.json") in r.stdout


# -- every option of every command, at random ---------------------------------------------------------------------


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every runnable command under ``group`` with its path of names."""
    out: list[tuple[tuple[str, ...], click.Command]] = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += leaf_commands(cmd, (*prefix, name))
        else:
            out.append(((*prefix, name), cmd))
    return out


# Whatever a shell can pass (no NUL); paths stay relative (the runner works in a temporary directory).
NASTY = ["", " ", "-", "--", "1e400", "inf", "nan", "-1", "0", "1" * 5000, "[red]x[/]", "[/]", "\udcff", "½",
         "S3", "q35", "baseline", "a\nb", "~", ".", "x/y", "report.json"]
arg_text = st.one_of(st.sampled_from(NASTY), st.text(st.characters(blacklist_characters="\x00/"), max_size=12))


PLAUSIBLE = {"--profile": ["baseline", "suspend-bit", "freeze-mode+s4-replay", "turbo"],
             "--resource-size": ["4K", "256K", "1M"], "--real": ["real.json", "missing.json", "."]}


def plausible(p: click.Option) -> st.SearchStrategy[str]:
    """Values of the option's own kind (so a command line often gets past parsing into the command)."""
    name = max(p.opts, key=len)
    if name in PLAUSIBLE:
        return st.sampled_from(PLAUSIBLE[name])
    if isinstance(p.type, click.Choice):
        return st.sampled_from([str(c) for c in p.type.choices])
    if isinstance(p.type, click.IntRange):
        lo = -3 if p.type.min is None else p.type.min - 1
        hi = (lo + 10) if p.type.max is None else min(p.type.max + 1, lo + 64)
        return st.integers(lo, hi).map(str)
    if isinstance(p.type, click.Path):
        return st.sampled_from(["out", "o/p", "[x]", "real.json", ".", "o\udcff"])
    return arg_text


@st.composite
def command_line(draw: st.DrawFn) -> tuple[tuple[str, ...], list[str]]:
    path, cmd = draw(st.sampled_from(leaf_commands(main)))
    args: list[str] = list(path)
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.hidden or not (p.required or draw(st.booleans())):
            continue
        for _ in range(draw(st.integers(1, 2)) if p.multiple else 1):
            name = draw(st.sampled_from(p.opts + p.secondary_opts))
            if p.is_flag:
                args.append(name)
                continue
            args += [name, draw(st.one_of(plausible(p), plausible(p), plausible(p), arg_text))]
    if draw(st.integers(0, 9)) == 0:
        args.insert(draw(st.integers(0, len(args))), draw(arg_text))
    return path, args


RESULT_COMMANDS = {("vm", "compare"), ("vm", "matrix")}  # exit status 1 means "a difference / a cell failed"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=command_line())
def test_any_command_line_is_a_result_or_one_line(monkeypatch: pytest.MonkeyPatch, canned: CellResult,
                                                  line: tuple[tuple[str, ...], list[str]]) -> None:
    """Issue 9 (user input): random strings for every option of every command (the work stubbed): the exit
    status is 0, 1 only for a command whose 1 is a result, or 2 with exactly one ``pyvirtio: error:`` line;
    never a traceback."""
    path, args = line
    install_stubs(monkeypatch, canned)
    runner = CliRunner()
    with runner.isolated_filesystem():
        Path("real.json").write_text("{}")
        r = runner.invoke(main, args)
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, repr(r.exception))
    assert "Traceback" not in r.output
    assert r.exit_code in (0, 1, 2), (args, r.exit_code, r.output)
    if r.exit_code == 1:
        assert path in RESULT_COMMANDS, (args, r.output)
    if r.exit_code == 2:
        assert r.stderr.startswith("pyvirtio: error: ") and r.stderr.count("\n") == 1, (args, r.stderr)


def test_a_device_named_twice_is_plugged_twice() -> None:
    """``info --device rng --device rng`` was a ValueError traceback (two devices named ``rng``); the option
    is repeatable, so the second one is ``rng1``."""
    r = CliRunner().invoke(main, ["info", "--device", "rng", "--device", "rng", "--device", "test"])
    assert r.exit_code == 0, r.output
    assert [line.split()[1] for line in r.stdout.splitlines() if line.startswith("00:")] == ["rng", "rng1", "testdev"]


@pytest.mark.parametrize(("args", "needle"), [(["--bogus"], "No such option '--bogus'"),
                                              (["bogus"], "No such command 'bogus'"),
                                              (["pm", "bogus"], "No such command 'bogus'"),
                                              (["pm", "run"], "Missing option '--profile'"),
                                              (["vm", "compare", "--real", "missing.json"], "--real")])
def test_usage_errors_are_one_line(args: list[str], needle: str) -> None:
    """Click's usage errors (unknown option or command, missing option, a path that does not exist) are the
    policy's one line with a pointer to ``--help``; a group run without a command still prints its help."""
    r = CliRunner().invoke(main, args, prog_name="pyvirtio")
    assert "(see 'pyvirtio" in one_line_error(r, needle)
    r = CliRunner().invoke(main, ["pm"], prog_name="pyvirtio")
    assert r.exit_code in (0, 2) and r.output.startswith("Usage: pyvirtio pm")
