"""``data.decode=device``: workers ship bytes, the training device decodes. On CPU the device is the host, which
tests the whole path; it must give the CPU pipeline's images (same crops and flips, pixels within one level)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_config, write_images
from PIL import Image

from emae.data import batch_to_device, image_source, pretrain_loader
from emae.data.device_decode import EncodedBatch
from emae.engine.trainer import pretrain
from emae.errors import ConfigError


def first_batch(cfg):
    loader = pretrain_loader(cfg, image_source(cfg))
    loader.sampler.set_epoch(0)
    return next(iter(loader))


def hostile_folder(root):
    """Good JPEGs plus every kind the device path routes differently: PNG, grayscale and CMYK JPEG, and three
    unreadable files (truncated JPEG, zero bytes, text named .jpg)."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(7):  # smooth pictures: on white noise, PIL's 8-bit intermediate rounding differs by more
        small = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8))
        small.resize((24, 24), Image.BILINEAR).save(root / f"{i:04d}.jpg", quality=95)
    pixels = np.asarray(Image.open(root / "0006.jpg"))
    (root / "0006.jpg").unlink()
    Image.fromarray(pixels).save(root / "png.png")
    Image.fromarray(pixels[..., 0]).save(root / "gray.jpg")
    Image.fromarray(pixels).convert("CMYK").save(root / "cmyk.jpg")
    data = (root / "0000.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    return 9, {"truncated.jpg", "empty.jpg", "text.jpg"}


def test_device_decode_matches_cpu_pipeline(tmp_path):
    readable, unreadable = hostile_folder(tmp_path)
    n = readable + len(unreadable)
    base = ("model.img_size=16", f"train.batch_size={n}", "data.num_workers=0")
    cpu_cfg = tiny_config(*base, **{"data.path": str(tmp_path)})
    cpu_imgs, cpu_labels, cpu_bad = first_batch(cpu_cfg)
    cpu_imgs, _ = batch_to_device(cpu_imgs, cpu_cfg, torch.device("cpu"))  # the workers' uint8, normalised
    cfg = tiny_config(*base, "data.decode=device", **{"data.path": str(tmp_path)})
    enc, labels, bad = first_batch(cfg)
    assert isinstance(enc, EncodedBatch)
    names = [p.rsplit("/", 1)[-1] for p in enc.paths]
    assert {n for n, e in zip(names, enc.encoded) if not e} == {"png.png", "cmyk.jpg"}  # the worker decoded these
    imgs, failed = batch_to_device(enc, cfg, torch.device("cpu"))
    # a truncated JPEG fails in the worker's header check or else on the device
    assert {p.rsplit("/", 1)[-1] for p in failed} <= {"truncated.jpg"}
    assert {p.rsplit("/", 1)[-1] for p in bad + failed} == {p.rsplit("/", 1)[-1] for p in cpu_bad} == unreadable
    assert torch.equal(labels, cpu_labels)
    same = torch.tensor([p not in failed for p in enc.paths])
    one_level = 1 / 255 / min(cfg.data.std) + 1e-5
    assert imgs.shape == cpu_imgs.shape
    diff = (imgs - cpu_imgs)[same].abs()
    assert diff.max() <= one_level  # same crop boxes and flips; resize rounding differs by at most one level
    assert diff.mean() < one_level / 10


def test_jpeg_failing_on_the_device_is_reported_and_replaced(tmp_path):
    write_images(tmp_path, 4, size=24)
    cfg = tiny_config("model.img_size=16", "train.batch_size=4", "data.num_workers=0", "data.decode=device",
                      **{"data.path": str(tmp_path)})
    enc, _, _ = first_batch(cfg)
    enc.payloads[2] = enc.payloads[2][: len(enc.payloads[2]) // 2]  # passes the worker's header check, not decoding
    imgs, failed = batch_to_device(enc, cfg, torch.device("cpu"))
    assert failed == [enc.paths[2]]
    assert imgs.shape == (4, 3, 16, 16) and torch.isfinite(imgs).all()
    assert torch.equal(imgs[2], imgs[3])  # the slot holds the next decodable image of the batch


def test_jpeg_bytes_stay_on_the_host_for_the_device_decoder(tmp_path, monkeypatch):
    """torchvision's decode_jpeg reads the bytes on the host and decodes on ``device``; bytes already moved to a GPU
    raise "Input list must contain tensors on CPU" (seen on the H200). The meta device stands in for the GPU."""
    write_images(tmp_path, 3, size=24)
    cfg = tiny_config("model.img_size=16", "train.batch_size=3", "data.num_workers=0", "data.decode=device",
                      **{"data.path": str(tmp_path)})
    enc, _, _ = first_batch(cfg)
    seen = {}

    class Seen(Exception):
        pass

    def spy(datas, mode, device):
        seen.update(devices={d.device.type for d in datas}, target=torch.device(device).type)
        raise Seen

    monkeypatch.setattr("emae.data.device_decode.decode_jpeg", spy)
    with pytest.raises(Seen):
        batch_to_device(enc, cfg, torch.device("meta"))
    assert seen == {"devices": {"cpu"}, "target": "meta"}


def test_pretrain_with_device_decode_logs_skipped_files(tmp_path):
    data = tmp_path / "data"
    hostile_folder(data)
    out = tmp_path / "run"
    cfg = tiny_config("data.decode=device", "train.batch_size=4", "train.epochs=2", "data.num_workers=1",
                      "train.num_vis=2", **{"data.path": str(data), "output_dir": str(out)})
    result = pretrain(cfg, progress=False)
    assert result.global_step == 6 and np.isfinite(result.loss)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["count"] for r in records if r["type"] == "skipped"] == [3, 3]  # every file is visited each epoch


@pytest.mark.parametrize("extra, message", [
    ((), "give data.path"),
    (("data.cache=true",), "exclude each other"),
    (("data.decode=gpu",), "choose cpu or device"),
])
def test_device_decode_settings_are_checked(tmp_path, extra, message):
    flags = {"data.path": str(tmp_path)} if extra else {}
    with pytest.raises(ConfigError, match=message):
        tiny_config("data.decode=device", *extra, **flags)
