"""``emae visualize`` and ``emae plot``: pictures from checkpoints and run logs."""

from __future__ import annotations

import pytest
from PIL import Image

from emae.cli.main import main
from emae.masks import MASKS

from evalkit import save_emae_checkpoint
from helpers import write_images


@pytest.mark.parametrize("stats", ["true", "visible"])
def test_visualize_grid(tmp_path, capsys, stats):
    ckpt = save_emae_checkpoint(tmp_path / "c.pt")
    write_images(tmp_path / "imgs", 5)  # any layout: labels are not needed
    out = tmp_path / f"{stats}.png"
    assert main(["visualize", str(ckpt), "--data", str(tmp_path / "imgs"), "--output", str(out), "--num", "3",
                 "--stats", stats]) == 0
    assert f"stats {stats}" in capsys.readouterr().out
    w, h = Image.open(out).size
    assert w > h > 0  # 3 rows of 4 columns at 16 px x 8


def test_visualize_every_mask_strategy(tmp_path):
    ckpt = save_emae_checkpoint(tmp_path / "c.pt")
    write_images(tmp_path / "imgs", 2)
    for name in MASKS:
        out = tmp_path / f"{name}.png"
        assert main(["visualize", str(ckpt), "--data", str(tmp_path / "imgs"), "--output", str(out), "--num", "2",
                     "--mask-type", name]) == 0, name
        assert out.stat().st_size > 0


def test_plot_errors_are_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emae: error: ") and "no log.jsonl" in err
