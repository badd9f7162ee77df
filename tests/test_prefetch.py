"""data.device_prefetch (data/prefetch.py): the loader's batches, in order, made ready one ahead by a thread; the
loop can break out and start again; errors reach the consumer; a run and its resume are bit-identical to the
same run without it. On the CPU the thread does the work on the host (the CUDA-stream branch needs a GPU)."""

from __future__ import annotations

import threading

import pytest
import torch

from emae.data import batch_to_device, image_source, pretrain_loader
from emae.data.loader import close_loader
from emae.data.prefetch import DevicePrefetcher, Prepared
from emae.engine import load_checkpoint, pretrain
from emae.errors import DataError

from helpers import tiny_config, write_images

CPU = torch.device("cpu")


def threads() -> int:
    return sum(t.name == "emae-device-prefetch" for t in threading.enumerate())


def test_prefetched_batches_are_the_loaders_in_order(tmp_path):
    write_images(tmp_path, 20, size=24)
    (tmp_path / "zz.jpg").write_bytes(b"broken")
    cfg = tiny_config("train.batch_size=4", "data.num_workers=1", "data.device_prefetch=true",
                      **{"data.path": str(tmp_path)})
    source = image_source(cfg)
    plain, ahead = pretrain_loader(cfg, source), pretrain_loader(cfg, source, device=CPU)
    assert isinstance(ahead, DevicePrefetcher) and not isinstance(plain, DevicePrefetcher)
    for epoch in (0, 1):
        plain.sampler.set_epoch(epoch)
        ahead.sampler.set_epoch(epoch, 1)  # the sampler passes through: a resume point too
        want = list(plain)[1:]
        got = list(ahead)
        assert len(got) == len(want) == 4
        for (p, pl, pb), (a, al, ab) in zip(want, got):
            assert isinstance(a, Prepared)
            imgs, failed = batch_to_device(a, cfg, CPU)
            assert torch.equal(imgs, batch_to_device(p, cfg, CPU)[0]) and torch.equal(al, pl) and ab == pb
    ahead.sampler.set_epoch(0)
    for i, _ in enumerate(ahead):  # the loop breaks out early; the next epoch starts cleanly
        if i == 1:
            break
    assert threads() == 0 and len(list(ahead)) == 5
    close_loader(ahead)
    close_loader(plain)


def test_errors_reach_the_consumer_and_close_stops_the_thread():
    class Failing:
        sampler = None

        def __iter__(self):
            yield torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2), []
            raise DataError("no image of a batch could be read")

    cfg = tiny_config()
    ahead = DevicePrefetcher(Failing(), lambda imgs: batch_to_device(imgs, cfg, CPU), CPU)
    it = iter(ahead)
    first = next(it)[0]
    assert first.take()[0].dtype == torch.float32
    with pytest.raises(DataError, match="no image of a batch"):
        next(it)
    assert threads() == 0


def test_a_run_with_prefetch_resumes_bit_exactly(tmp_path, monkeypatch):
    """The trainer passes its device, so the loop's batches come through the prefetcher; a run with it, stopped
    mid-epoch and resumed, ends with the parameters of the same run without it."""
    write_images(tmp_path / "imgs", 24, size=24)
    epochs = []
    fill = DevicePrefetcher._fill
    monkeypatch.setattr(DevicePrefetcher, "_fill", lambda self, *a: (epochs.append(1), fill(self, *a)))

    def run(out, *more, resume=None):
        cfg = tiny_config("train.epochs=2", "train.batch_size=6", "train.num_vis=0", "data.num_workers=1", *more,
                          **{"data.path": str(tmp_path / "imgs"), "output_dir": str(out)})
        return pretrain(cfg, resume=resume, progress=False)

    plain = run(tmp_path / "a")
    run(tmp_path / "b", "data.device_prefetch=true", "train.stop_after_steps=3")
    second = run(tmp_path / "b", "data.device_prefetch=true", resume="auto")
    a, b = load_checkpoint(plain.checkpoint)["model"], load_checkpoint(second.checkpoint)["model"]
    assert second.global_step == plain.global_step == 8 and all(torch.equal(a[k], b[k]) for k in a)
    assert len(epochs) == 3 and threads() == 0  # epoch 0 (stopped), then epochs 0 and 1 of the resume
