"""The configs of the dense commands: ``segprobe`` (the frozen dense probe) and ``segment`` (segmentation
fine-tuning on the one loop); their data is a semantic-segmentation layout (``emae.data.segmentation``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .evaluation import EvalRootConfig, EvalRunConfig, check_source
from .loop import LoopConfig, check_loop, check_run
from .typed import choose, positive, require

LAYOUTS = ("auto", "folders", "ade20k")
SEG_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # linprobe's grid without its ends (benchmarks/RESULTS.md, CamVid)


@dataclass
class SegDataConfig:
    path: str | None = None  # the data set root: {train,val}/{images,labels} (CamVid's) or ADE20K's layout
    layout: str = "auto"  # auto | folders | ade20k
    num_classes: int | None = None  # None: the layout's (CamVid 11, ADE20K 150)
    ignore_index: int | None = None  # None: the layout's (CamVid 11, ADE20K 255 after reduce-zero-label)
    class_names: list[str] | None = None
    img_size: list[int] | None = None  # [H, W] (or [S]) of the network's input; None: the first image's, / 32
    max_train: int | None = None  # a seeded random subset of N training images
    max_val: int | None = None
    mean: list[float] | None = None  # None: the checkpoint's (emae), else ImageNet's
    std: list[float] | None = None
    num_workers: int = 0

    @property
    def size(self) -> tuple[int, int] | None:
        return None if self.img_size is None else (self.img_size[0], self.img_size[-1])


def check_seg_data(d: SegDataConfig) -> None:
    require(d.path is not None, "data.path", d.path, "give the data set root (--data DIR)")
    choose(d.layout, "data.layout", LAYOUTS)
    positive(d, "data.", "num_classes", "max_train", "max_val")
    require(d.ignore_index is None or d.ignore_index >= 0, "data.ignore_index", d.ignore_index, "must be >= 0")
    require(d.img_size is None or (len(d.img_size) in (1, 2) and min(d.img_size) > 0), "data.img_size", d.img_size,
            "give [H, W] (or one side), positive")
    require(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    require(d.std is None or all(s > 0 for s in d.std), "data.std", d.std, "values must be positive")


@dataclass
class SegProbeSection:
    pixels_per_image: int = 200  # labelled training pixels drawn per image for the fit
    c_grid: list[float] | None = None  # candidate inverse L2 strengths; None: 1e-3 ... 10
    holdout: float = 0.1  # share of the training images held out to choose C
    tol: float = 1e-6  # L-BFGS stops when the largest gradient entry is below this
    max_iter: int = 10000  # a fit that needs more iterations is reported as not converged
    feature_cache: str | None = None  # folder to keep the feature maps in
    picture_images: int = 4  # validation images in segprobe.png (0: none)

    @property
    def grid(self) -> tuple[float, ...]:
        return tuple(self.c_grid or SEG_C_GRID)


@dataclass
class SegprobeRunConfig(EvalRunConfig):
    batch_size: int = 16


@dataclass
class SegprobeConfig(EvalRootConfig):
    data: SegDataConfig = field(default_factory=SegDataConfig)
    probe: SegProbeSection = field(default_factory=SegProbeSection)
    run: SegprobeRunConfig = field(default_factory=SegprobeRunConfig)

    command = "segprobe"

    def validate(self) -> None:
        p = self.probe
        check_source(self)
        check_seg_data(self.data)
        check_run(self.run, "run.")
        positive(p, "probe.", "pixels_per_image", "tol", "max_iter", allow_none=False)
        require(all(c > 0 for c in p.grid), "probe.c_grid", p.c_grid, "every C must be positive")
        require(0 < p.holdout < 1, "probe.holdout", p.holdout, "must be between 0 and 1")
        require(p.picture_images >= 0, "probe.picture_images", p.picture_images, "must be >= 0")


@dataclass
class SegmentTrainConfig(LoopConfig):
    """Segmentation fine-tuning (ViTDet / BEiT / MAE's ADE20K recipe, scaled down): AdamW with layer-wise lr decay,
    warmup then cosine, drop path; image and label move together through random scale, crop and flip."""

    epochs: int = 40
    batch_size: int = 8
    base_lr: float = 1e-3  # lr = base_lr * batch_size * accum_iter / 256 unless lr is given
    min_lr: float = 1e-6
    warmup_epochs: float = 2
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    layer_decay: float | None = None  # None: the family's fine-tuning default (ViT 0.65, Swin / PVT 0.85)
    drop_path: float = 0.1
    base_size: list[int] | None = None  # [H, W] box each image is fitted into before the random scale (mmseg's
    # img_scale); None: the crop, data.img_size. Evaluation runs on images fitted into it: whole (resized to the
    # crop) or slide (crop-sized windows, 2/3 overlap)
    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])  # random scale range of the base size
    hflip: bool = True
    neck_dim: int = 128  # the simple feature pyramid's / lateral convs' width
    head_dim: int = 128  # the UperNet-style head's width
    ppm: bool = True  # a pyramid pooling module on the coarsest level
    dropout: float = 0.1  # before the classifier
    eval_mode: str = "whole"  # whole | slide (sliding-window inference, window = the crop)
    eval_every: int = 5  # epochs between validations (and always at the end)
    log_every: int = 10
    keep_last: int = 1
    picture_images: int = 4  # validation images in segment.png (0: none)
    seeds: list[int] | None = None


@dataclass
class SegmentConfig(EvalRootConfig):
    data: SegDataConfig = field(default_factory=SegDataConfig)
    train: SegmentTrainConfig = field(default_factory=SegmentTrainConfig)

    command = "segment"

    def validate(self) -> None:
        t = self.train
        check_source(self)
        check_seg_data(self.data)
        check_loop(t)
        positive(t, "train.", "layer_decay")
        positive(t, "train.", "neck_dim", "head_dim", "eval_every", allow_none=False)
        require(len(t.scale) == 2 and 0 < t.scale[0] <= t.scale[1], "train.scale", t.scale, "need 0 < min <= max")
        require(0 <= t.drop_path < 1 and 0 <= t.dropout < 1, "train.drop_path", t.drop_path, "rates lie in [0, 1)")
        require(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas", t.betas,
                "need two values in [0, 1)")
        choose(t.eval_mode, "train.eval_mode", ("whole", "slide"))
        require(t.base_size is None or (len(t.base_size) in (1, 2) and min(t.base_size) > 0), "train.base_size",
                t.base_size, "give [H, W] (or one side), positive")
        require(self.data.img_size is not None, "data.img_size", None, "segment needs the crop size: --img-size H W")
        require(t.picture_images >= 0, "train.picture_images", t.picture_images, "must be >= 0")
