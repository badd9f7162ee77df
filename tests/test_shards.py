"""Shards: folder -> shards -> the same images and labels; streams that are disjoint per rank and worker, cover the
data, resume exactly mid-epoch, and count (never hang on) a damaged shard; URLs; evaluation on shards."""

from __future__ import annotations

import functools
import io
import http.server
import json
import multiprocessing as mp
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

import emae
from emae.cli.main import main
from emae.config import IMAGENET_MEAN, IMAGENET_STD
from emae.data import ShardSet, image_source, is_shards, pretrain_loader
from emae.data.shard_writer import write_shards
from emae.data.stream import buffered_order
from emae.engine import load_checkpoint, pretrain, read_log
from emae.errors import DataError

from helpers import tiny_config, write_images

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")
ENCODE = 251  # test images: sample i is a solid colour (i % 251, i // 251, 0), whatever the crop or flip


def ids(imgs: torch.Tensor) -> list[int]:
    """Back from a batch of solid colours (the loader's uint8, or normalised floats) to the sample numbers."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3), torch.tensor(IMAGENET_STD).view(1, 3)
    if imgs.dtype == torch.uint8:
        rgb = imgs.float().mean(dim=(2, 3))
    else:
        rgb = (imgs.mean(dim=(2, 3)) * std + mean) * 255
    return [int(round(r)) + ENCODE * int(round(g)) for r, g, _ in rgb.tolist()]


def id_images(root: Path, n: int, classes=("a", "b", "c")) -> None:
    for i in range(n):
        sub = root / classes[i % len(classes)]
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 12), (i % ENCODE, i // ENCODE, 0)).save(sub / f"{i:04d}.png")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    id_images(root / "img", 64)
    write_shards(root / "img", root / "sh", shard_size=10, progress=False)  # 7 shards: 6 x 10 + 4
    return root


def test_folder_to_shards_round_trip_keeps_bytes_and_labels(tmp_path, capsys):
    write_images(tmp_path / "img", 13, size=20, classes=("cat", "dog"))
    (tmp_path / "img" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    Image.new("L", (9, 7), 200).save(tmp_path / "img" / "cat" / "grey.png")
    argv = ["shards", "write", "--data", str(tmp_path / "img"), "--output", str(tmp_path / "sh"), "--shard-size", "4",
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "14 images in 4 shards" in out and "skipped 1 unreadable files" in out and "broken.jpg" in out
    assert is_shards(tmp_path / "sh") and not is_shards(tmp_path / "img")
    shards = ShardSet(tmp_path / "sh")
    folder = emae.data.ImageFiles(tmp_path / "img")
    assert shards.classes == folder.classes == ["cat", "dog"] and len(shards) == 14
    stored = sorted((shards.read_bytes(i), shards.labels[i]) for i in range(len(shards)))
    originals = sorted((Path(p).read_bytes(), y) for p, y in zip(folder.paths, folder.labels) if "broken" not in p)
    assert stored == originals  # the encoded bytes, untouched, with their classes
    for i in range(len(shards)):  # and they decode to the same pixels as the files do
        img, label, skipped = shards.fetch(i)
        match = [j for j, p in enumerate(folder.paths) if Path(p).read_bytes() == shards.read_bytes(i)][0]
        assert np.array_equal(np.asarray(img), np.asarray(folder.fetch(match)[0])) and label == folder.labels[match]
    assert main(argv) == 2  # shards already there: one line, nothing replaced
    assert "already holds shards; pass --overwrite" in capsys.readouterr().err


def test_max_side_re_encodes_only_larger_images(tmp_path, capsys):
    """``--max-side 32 --quality 85``: larger images come back at 32 px on the longer side, aspect kept, as JPEG
    close to a resize of the original; smaller ones keep their bytes; transparency stays PNG; the labels stay."""
    img = tmp_path / "img"
    rng = np.random.default_rng(0)
    (img / "a").mkdir(parents=True)
    (img / "b").mkdir()
    smooth = Image.fromarray(rng.integers(60, 200, (3, 4, 3), dtype=np.uint8)).resize((80, 60), Image.BILINEAR)
    smooth.save(img / "a" / "large.jpg", quality=95)
    smooth.resize((20, 15)).save(img / "a" / "small.jpg")
    Image.new("RGBA", (50, 40), (10, 200, 30, 128)).save(img / "b" / "alpha.png")
    Image.new("L", (40, 64), 90).save(img / "b" / "grey.png")
    argv = ["shards", "write", "--data", str(img), "--output", str(tmp_path / "sh"), "--no-progress",
            "--max-side", "32", "--quality", "85"]
    assert main(argv) == 0
    assert "4 images in 1 shards" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "sh" / "shards.json").read_text())
    assert (manifest["max_side"], manifest["quality"], manifest["resized"]) == (32, 85, 3)
    shards = ShardSet(tmp_path / "sh")
    by_label = {}
    for i in range(len(shards)):
        data = shards.read_bytes(i)
        with Image.open(io.BytesIO(data)) as im:
            by_label.setdefault(shards.labels[i], []).append((im.format, im.mode, im.size, data))
    a = sorted(by_label[0], key=lambda t: t[2])
    assert a[0][3] == (img / "a" / "small.jpg").read_bytes()  # no larger than 32: the original bytes
    assert a[1][:3] == ("JPEG", "RGB", (32, 24))
    expected = np.asarray(smooth.resize((32, 24), Image.LANCZOS)).astype(int)
    assert np.abs(np.asarray(Image.open(io.BytesIO(a[1][3]))).astype(int) - expected).mean() < 3
    assert sorted(t[:3] for t in by_label[1]) == [("JPEG", "L", (20, 32)), ("PNG", "RGBA", (32, 26))]
    for bad, message in ((["--max-side", "0"], "--max-side 0"), (["--quality", "80"], "give --max-side too"),
                         (["--max-side", "9", "--quality", "101"], "--quality 101")):
        assert main(["shards", "write", "--data", str(img), "--output", str(tmp_path / "x"), *bad]) == 2
        assert message in capsys.readouterr().err


def test_buffered_shuffle_is_a_permutation_that_mixes():
    rng = np.random.default_rng(0)
    order = buffered_order(1000, 100, rng)
    assert sorted(order) == list(range(1000))
    assert sum(a < b for a, b in zip(order, order[1:])) < 700  # not the reading order
    assert buffered_order(10, 100, rng) != list(range(10)) and sorted(buffered_order(10, 100, rng)) == list(range(10))


def epoch_ids(cfg, source, rank=0, world=1, epoch=0, start=0) -> list[list[int]]:
    loader = pretrain_loader(cfg, source, rank, world)
    loader.sampler.set_epoch(epoch, start)
    out = [ids(imgs) for imgs, _, bad in loader]
    del loader
    return out


def test_streams_resume_mid_epoch_exactly_with_workers(shards):
    cfg = tiny_config("train.batch_size=4", "data.num_workers=2", "data.shuffle_buffer=8",
                      **{"data.path": str(shards / "sh")})
    source = image_source(cfg)
    full = epoch_ids(cfg, source)
    assert len(full) == 16 and sorted(sum(full, [])) == list(range(64))  # 2 streams x 32: every sample once
    assert sum(full, []) != list(range(64)) and full != epoch_ids(cfg, source, epoch=1)  # shuffled, anew each epoch
    for start in (3, 8):  # resume inside the epoch: the same batches, the same images in them
        assert epoch_ids(cfg, source, start=start) == full[start:]


@pytest.mark.slow
def test_pretrain_from_shards_resumes_bit_exactly(shards, tmp_path):
    def run(out, *extra, resume=None):
        cfg = tiny_config("train.epochs=2", "train.batch_size=4", "train.num_vis=2", "data.num_workers=2",
                          "train.log_every=1", *extra, **{"data.path": str(shards / "sh"), "output_dir": str(out)})
        return pretrain(cfg, resume=resume, progress=False)

    straight = run(tmp_path / "a")
    run(tmp_path / "b", "train.stop_after_steps=11")  # mid-epoch: 16 steps per epoch
    second = run(tmp_path / "b", resume="auto")
    assert straight.global_step == second.global_step == 32
    a, b = load_checkpoint(straight.checkpoint)["model"], load_checkpoint(second.checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_log(tmp_path / "a" / "log.jsonl")[0]["images"] == 64


def damaged_copy(shards: Path, tmp_path: Path) -> Path:
    """The shard folder with shard 2's file cut in half."""
    out = tmp_path / "damaged"
    out.mkdir()
    for f in shards.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    tar = out / "shard-000002.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    return out


def test_truncated_shard_is_a_counted_skip_never_a_hang(shards, tmp_path):
    damaged = damaged_copy(shards / "sh", tmp_path)
    cfg = tiny_config("train.batch_size=4", "data.num_workers=0", **{"data.path": str(damaged)})
    loader = pretrain_loader(cfg, image_source(cfg))
    bad = [b for _, _, batch_bad in loader for b in batch_bad]
    assert len(bad) == len(set(bad)) and 3 <= len(bad) <= 10  # shard 2's second half, each sample once
    assert all("shard-000002.tar#" in b for b in bad)
    cfg.data.strict = True
    with pytest.raises(DataError, match="shard-000002.tar"):
        list(pretrain_loader(cfg, image_source(cfg)))
    source = ShardSet(damaged)  # random access (evaluation, pictures): skipped and replaced too
    img, _, skipped = source.fetch(source.starts[2] + 9)
    assert skipped and img.size == (12, 12)


def test_pretrain_skips_and_logs_a_damaged_shard(shards, tmp_path, capsys):
    damaged = damaged_copy(shards / "sh", tmp_path)
    argv = ["pretrain", "--data", str(damaged), "--output", str(tmp_path / "run"), "--no-progress",
            "train.max_steps=16", "train.batch_size=4", "data.num_workers=0", "train.num_vis=0",
            *[a for a in tiny_config.__globals__["TINY"]]]
    assert main(argv) == 0
    skipped = [r for r in read_log(tmp_path / "run" / "log.jsonl") if r["type"] == "skipped"]
    assert skipped and 3 <= skipped[0]["count"] <= 10
    assert "unreadable files" in capsys.readouterr().out


@pytest.fixture
def http_url(shards):
    """The shard folder served over HTTP on the loopback address."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(shards / "sh"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_shards_stream_from_a_url(shards, http_url):
    local = tiny_config("train.batch_size=4", "data.num_workers=0", **{"data.path": str(shards / "sh")})
    remote = tiny_config("train.batch_size=4", "data.num_workers=0", **{"data.path": http_url})
    assert is_shards(http_url)
    source = image_source(remote)
    assert isinstance(source, ShardSet) and len(source) == 64
    assert epoch_ids(remote, source, start=5) == epoch_ids(local, image_source(local), start=5)
    img, label, _ = source.fetch(33)  # random access copies the shard into a local cache first
    assert np.array_equal(np.asarray(img), np.asarray(image_source(local).fetch(33)[0]))
    r, g, _ = np.asarray(img)[0, 0].tolist()
    assert label == (r + ENCODE * g) % 3  # image i was written into class i % 3


def test_knn_and_visualize_on_shards(tmp_path, capsys):
    from evalkit import labelled_data, save_emae_checkpoint

    ckpt = save_emae_checkpoint(tmp_path / "c.pt")
    data = labelled_data(tmp_path / "d")
    for split in ("train", "val"):
        write_shards(data / split, tmp_path / "s" / split, shard_size=5, progress=False)
    common = ["--k", "3", "--no-progress", "--batch-size", "8"]
    assert main(["knn", str(ckpt), "--data", str(data), "--output", str(tmp_path / "a"), *common]) == 0
    assert main(["knn", str(ckpt), "--data", str(tmp_path / "s"), "--output", str(tmp_path / "b"), *common]) == 0
    a, b = (json.loads((tmp_path / x / "metrics.json").read_text()) for x in "ab")
    assert a["k=3"] == b["k=3"] and a["train_images"] == b["train_images"] == 12
    png = tmp_path / "recon.png"
    assert main(["visualize", str(ckpt), "--data", str(tmp_path / "s" / "val"), "--output", str(png), "--num", "2"]) == 0
    assert png.stat().st_size > 500


def read_as_rank(rank: int, data: str, out: Path) -> None:
    """One of two gloo ranks: two epochs through the pre-training loader with two worker processes; writes the
    sample numbers it saw, per batch, to rankN.json."""
    dist.init_process_group("gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=2)
    cfg = tiny_config("train.batch_size=4", "data.num_workers=2", "data.shuffle_buffer=8", **{"data.path": data})
    loader = pretrain_loader(cfg, image_source(cfg, progress=False), dist.get_rank(), dist.get_world_size())
    seen = {}
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        seen[epoch] = [ids(imgs) for imgs, _, _ in loader]
    del loader
    (out / f"rank{rank}.json").write_text(json.dumps(seen))
    dist.barrier()
    dist.destroy_process_group()


@needs_gloo
def test_two_gloo_ranks_times_two_workers_see_disjoint_samples_covering_the_data(shards, tmp_path):
    ctx = mp.get_context("fork")  # the children start with emae imported
    procs = [ctx.Process(target=read_as_rank, args=(rank, str(shards / "sh"), tmp_path)) for rank in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    seen = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    for epoch in ("0", "1"):
        per_rank = [sum(s[epoch], []) for s in seen]
        assert len(set(per_rank[0]) & set(per_rank[1])) == 0  # no sample on both ranks
        assert all(len(p) == len(set(p)) == 32 for p in per_rank)  # none twice within a rank (its two streams)
        assert sorted(per_rank[0] + per_rank[1]) == list(range(64))  # together: the whole data set
        assert all(len(s[epoch]) == 8 for s in seen)  # equal step counts: no rank waits for another
