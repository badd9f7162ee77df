"""The configs of the evaluation commands (finetune, linprobe, knn): the checkpoint, its data, the recipe.

Each is loaded like pre-training's (:func:`emae.config.load`): defaults <- YAML recipe (``command: finetune``)
<- the command's flags <- ``key=value``. Defaults are MAE's recipes (finetune: §A.3, ViT-B; linprobe ``mae``
protocol: §A.2); the shipped recipes in ``configs/`` cite theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .loop import LoopConfig, RunConfig, check_loop, check_run
from .typed import RootConfig, choose, positive, require

POOLS = ("cls", "avg")  # a feature vector per image: the cls token, or the mean of the patch tokens (pyramids: avg)
CENTERINGS = ("both", "none", "train-mean")
PROTOCOLS = ("logreg", "mae")


@dataclass
class SourceConfig:
    """The encoder of ``checkpoint: random``, and what a plain state dict leaves open."""

    arch: str = "vit_tiny"  # random: a named ViT size (vit_tiny/small/base/large/huge)
    embed_dim: int | None = None  # random: width (overrides arch)
    depth: int | None = None  # random: depth (overrides arch)
    num_heads: int | None = None  # attention heads (not stored in plain state dicts; inferred from the width)
    patch_size: int = 4  # random: patch size
    in_chans: int = 3  # random: input channels
    img_size: int | None = None  # pre-training image size where the position embedding is not a square grid;
    # random: data.img_size, else 32


@dataclass
class EvalRootConfig(RootConfig):
    """What every evaluation command's config starts with: the checkpoint and what it leaves open."""

    checkpoint: str | None = None  # emae, official MAE, timm, safetensors, Hugging Face folder, or 'random'
    trust_checkpoint: bool = False  # unpickle in full (can run code from the file): trusted files only
    output_dir: str | None = None  # None: runs/<command>-<timestamp>
    model: SourceConfig = field(default_factory=SourceConfig)


@dataclass
class EvalDataConfig:
    path: str | None = None  # a folder with train/ and val/ (or test/): ImageFolder trees or shard folders
    train: str | None = None  # ... or the two folders (or shard URLs) by name
    val: str | None = None
    max_train: int | None = None  # a seeded class-balanced subset of N training images
    max_val: int | None = None  # ... and of N validation images
    img_size: int | None = None  # evaluation resolution; None: the checkpoint's (position embeddings interpolated)
    mean: list[float] | None = None  # normalisation; None: the checkpoint's (emae), else ImageNet's
    std: list[float] | None = None
    crop_pct: float | None = None  # eval resize = size / crop_pct, centre crop; None: 0.875 from 128 px up, else 1
    num_workers: int = 0  # loader processes; 0 is fastest for small images on few cores


@dataclass
class EvalRunConfig(RunConfig):
    batch_size: int = 256
    seeds: list[int] | None = None  # run once per seed ([N]: N seeds from seed on); mean ± std in metrics.json


@dataclass
class FinetuneTrainConfig(LoopConfig):
    epochs: int = 100
    warmup_epochs: float = 5
    base_lr: float = 5e-4  # lr = base_lr * batch_size * accum_iter / 256 unless lr is given
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    layer_decay: float | None = None  # None: 0.65 for a ViT (MAE), 0.85 for Swin / PVT (UM-MAE's Makefile)
    drop_path: float = 0.1
    pool: str = "avg"  # avg (global pool + fc_norm) | cls
    mixup: float = 0.8  # mixup alpha; 0: off
    cutmix: float = 1.0  # cutmix alpha; 0: off
    smoothing: float = 0.1
    reprob: float = 0.25  # random erasing probability
    aa: str | None = "rand-m9-mstd0.5-inc1"  # timm auto-augment policy; null or "none": off
    ema: float | None = None  # EMA decay of the weights, e.g. 0.9999 (evaluated beside the model); None: off
    new_head: bool = False  # replace a checkpoint's classifier head
    log_every: int = 20
    keep_last: int = 1  # run checkpoints kept for --resume (best.pt is kept apart)
    seeds: list[int] | None = None


@dataclass
class FinetuneConfig(EvalRootConfig):
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)

    command = "finetune"

    def validate(self) -> None:
        t = self.train
        check_source_and_images(self)
        check_loop(t)
        positive(t, "train.", "layer_decay", "ema")
        for key in ("drop_path", "mixup", "cutmix", "smoothing", "reprob"):
            require(getattr(t, key) >= 0, f"train.{key}", getattr(t, key), "must be >= 0")
        require(t.ema is None or t.ema < 1, "train.ema", t.ema, "an EMA decay is below 1 (e.g. 0.9999)")
        require(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas", t.betas,
                "need two values in [0, 1)")
        choose(t.pool, "train.pool", POOLS)
        if t.aa is not None and t.aa.lower() == "none":
            t.aa = None
        if (t.mixup > 0 or t.cutmix > 0) and t.batch_size % 2:
            require(False, "train.batch_size", t.batch_size, "must be even for mixup / cutmix")


@dataclass
class ProbeConfig:
    protocol: str = "logreg"  # logreg: converged logistic regression on cached features | mae: MAE's LARS recipe
    pool: str | None = None  # cls | avg; None: cls for a ViT, avg for a pyramid (its only one)
    feature_cache: str | None = None  # folder to keep frozen features in (knn and linprobe share them)
    c_grid: list[float] | None = None  # logreg: inverse L2 strengths tried on the held-out split; None: 1e-4 ... 100
    holdout: float = 0.1  # logreg: share of the training set held out to choose C
    tol: float = 1e-6  # logreg: L-BFGS stops when the largest gradient entry is below this
    max_iter: int = 10000  # logreg: iterations before a fit counts as unconverged


@dataclass
class ProbeTrainConfig(LoopConfig):
    """The ``mae`` protocol's loop (BatchNorm + linear head, LARS, RandomResizedCrop + flip); batch_size, device,
    precision and seed apply to both protocols."""

    batch_size: int = 256
    epochs: int = 90
    warmup_epochs: float = 10
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256 unless lr is given
    weight_decay: float = 0.0
    momentum: float = 0.9
    log_every: int = 50
    keep_last: int = 1
    seeds: list[int] | None = None


@dataclass
class LinprobeConfig(EvalRootConfig):
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    train: ProbeTrainConfig = field(default_factory=ProbeTrainConfig)

    command = "linprobe"

    def validate(self) -> None:
        p = self.probe
        check_source_and_images(self)
        check_loop(self.train)
        choose(p.protocol, "probe.protocol", PROTOCOLS)
        if p.pool is not None:
            choose(p.pool, "probe.pool", POOLS)
        positive(p, "probe.", "tol", "max_iter", allow_none=False)
        for c in p.c_grid or ():
            require(c > 0, "probe.c_grid", p.c_grid, "every C must be positive")
        require(0 < p.holdout < 1, "probe.holdout", p.holdout, "must be between 0 and 1")
        require(self.train.momentum >= 0, "train.momentum", self.train.momentum, "must be >= 0")


@dataclass
class KnnOptions:
    k: list[int] = field(default_factory=lambda: [20, 200])  # neighbour counts, each reported
    temperature: float = 0.07  # vote weight exp(sim / T)
    pool: str | None = None  # cls | avg; None: cls for a ViT, avg for a pyramid
    center: str = "both"  # centre the features on the training mean first: both (reported with and without) | ...
    feature_cache: str | None = None


@dataclass
class KnnConfig(EvalRootConfig):
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    knn: KnnOptions = field(default_factory=KnnOptions)
    run: EvalRunConfig = field(default_factory=EvalRunConfig)

    command = "knn"

    def validate(self) -> None:
        k = self.knn
        check_source_and_images(self)
        check_run(self.run, "run.")
        require(bool(k.k) and all(v > 0 for v in k.k), "knn.k", k.k, "neighbour counts must be positive")
        positive(k, "knn.", "temperature", allow_none=False)
        choose(k.center, "knn.center", CENTERINGS)
        if k.pool is not None:
            choose(k.pool, "knn.pool", POOLS)


def check_source(cfg: Any) -> None:
    """The checkpoint and the model hints of any evaluation config."""
    m = cfg.model
    require(cfg.checkpoint is not None and cfg.checkpoint != "", "checkpoint", cfg.checkpoint,
            "name a checkpoint file or folder, or 'random'")
    positive(m, "model.", "embed_dim", "depth", "num_heads", "img_size")
    positive(m, "model.", "patch_size", "in_chans", allow_none=False)


def check_source_and_images(cfg: Any) -> None:
    """:func:`check_source`, and the image-folder data of the classification commands."""
    check_source(cfg)
    d = cfg.data
    positive(d, "data.", "max_train", "max_val", "img_size", "crop_pct")
    require(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    for key in ("mean", "std"):
        values = getattr(d, key)
        require(values is None or len(values) > 0, f"data.{key}", values, "give one value per channel")
    require(d.std is None or all(s > 0 for s in d.std), "data.std", d.std, "values must be positive")
