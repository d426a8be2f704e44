"""Regenerate docs/img/<profile>.png (before | after S3 | after S4), docs/img/timeline-*.png and docs/matrix.txt from
`pyvirtio pm matrix`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from pyvirtio.pm.profiles import DEFAULT_PROFILES

ROOT = Path(__file__).resolve().parent.parent
#: The cells whose timeline the README shows (profile slug, sleep state).
TIMELINES = (("suspend-bit", "S3"),)


def main() -> None:
    out = ROOT / "docs"
    (out / "img").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", "from pyvirtio.cli import run; run()", "pm", "matrix", "--out", tmp]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        (out / "matrix.txt").write_text(res.stdout)
        for prof in DEFAULT_PROFILES:
            slug = prof.replace("+", "_")
            names = [("before", f"{slug}-S3-before.png"), ("after S3", f"{slug}-S3-after.png"),
                     ("after S4", f"{slug}-S4-after.png")]
            tiles = [Image.open(Path(tmp) / "images" / n).convert("RGB").resize((160, 100)) for _, n in names]
            strip = Image.new("RGB", (3 * 160 + 20, 116), "white")
            draw = ImageDraw.Draw(strip)
            for i, ((label, _), tile) in enumerate(zip(names, tiles, strict=True)):
                strip.paste(tile, (i * 170, 16))
                draw.text((i * 170 + 2, 2), label, fill="black")
            strip.save(out / "img" / f"{slug}.png", optimize=True)
        for slug, sleep in TIMELINES:
            shutil.copyfile(Path(tmp) / "images" / f"{slug}-{sleep}-timeline.png",
                            out / "img" / f"timeline-{slug}-{sleep}.png")


if __name__ == "__main__":
    main()
