"""``pyvirtio gpu demo``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from pyvirtio.cli.gpu import demo_pattern, gpu


def test_demo_writes_one_png_per_scanout(tmp_path: Path) -> None:
    out = tmp_path / "shots"
    r = CliRunner().invoke(gpu, ["demo", "--out", str(out), "--scanouts", "2", "--width", "160", "--height", "120"])
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["scanout-0.png", "scanout-1.png"]
    for i in range(2):
        img = np.asarray(Image.open(out / f"scanout-{i}.png").convert("RGBA"))
        assert img.shape == (120, 160, 4)
        expect = demo_pattern(160, 120, i)
        diff = np.any(img != expect, axis=-1)
        ys, xs = np.nonzero(diff)  # only the cursor (at the centre, hotspot 0,0) differs
        assert len(ys) and ys.min() >= 60 and xs.min() >= 80 and ys.max() < 60 + 64 and xs.max() < 80 + 64
    assert str(out / "scanout-0.png") in r.output


def test_demo_bad_options_one_line_error(tmp_path: Path) -> None:
    """A bad or missing option is one line on stderr naming it, exit status 2 (the CLI's error policy)."""
    for args in (["--scanouts", "0"], ["--scanouts", "17"], ["--width", "8"], ["--height", "5000"], []):
        cmd = ["demo", *args] if not args else ["demo", "--out", str(tmp_path / "o"), *args]
        r = CliRunner().invoke(gpu, cmd)
        assert r.exit_code == 2, (args, r.output)
        assert r.stderr.startswith("pyvirtio: error: ") and r.stderr.count("\n") == 1, r.stderr
        assert ("--out" if not args else args[0]) in r.stderr
    f = tmp_path / "file"
    f.write_text("x")
    r = CliRunner().invoke(gpu, ["demo", "--out", str(f)])
    assert r.exit_code == 2 and "is a file" in r.output
