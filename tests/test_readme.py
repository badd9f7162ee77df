"""The README's Python API block runs as written (on a tiny checkpoint and two images at the paths it names)."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from evalkit import save_emae_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_block() -> str:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return block


def test_python_api_block_runs(tmp_path, monkeypatch):
    code = python_api_block()
    assert len(code.strip().splitlines()) <= 12  # "in ten lines", give or take the imports
    monkeypatch.chdir(tmp_path)
    ckpt = re.search(r'"(runs/[^"]+\.pt)"', code).group(1)
    Path(ckpt).parent.mkdir(parents=True)
    save_emae_checkpoint(Path(ckpt))
    for name, colour in (("cat.jpg", "orange"), ("ship.jpg", "navy")):
        Image.new("RGB", (40, 30), colour).save(name)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["feats"].shape == (2, 32) and Path("recon.png").stat().st_size > 500
