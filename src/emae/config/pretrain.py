"""The pre-training config (``emae pretrain``): model, mask, consistency, data and training sections."""

from __future__ import annotations

from dataclasses import dataclass, field

from .loop import LoopConfig
from .typed import RootConfig

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ModelConfig:
    arch: str = "vit_tiny"  # vit_tiny/small/base/large/huge; pyramids (umae, simmim): swin_t/s/b/l, pvt_t/s/m/l
    embed_dim: int | None = None  # override the named size's width (pyramids: stage 1's; later stages scale) ...
    depth: int | None = None  # ... depth (ViT) ...
    num_heads: int | None = None  # ... and heads (pyramids: stage 1's; later stages scale)
    depths: list[int] | None = None  # pyramids: blocks per stage (4 values), overrides the named size
    window_size: int = 8  # Swin: window on the pre-training grid (UM-MAE: 8 on the compact grid, x2 for fine-tuning;
    # SimMIM: 16 on the full grid, the same image area)
    sr_ratios: list[int] | None = None  # PVT: spatial reduction per stage; null: [4,2,1,1] for umae, [8,4,2,1] simmim
    img_size: int | list[int] = 32  # side, or [height, width]
    patch_size: int = 4
    in_chans: int = 3
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 128
    decoder_depth: int = 4
    decoder_num_heads: int = 4
    norm_pix_loss: bool = True
    pixel_loss: str = "auto"  # l2 | l1 | auto: l1 for simmim (SimMIM and UM-MAE's models_simmim_*.py), l2 otherwise

    @property
    def image_size(self) -> tuple[int, int]:
        s = self.img_size
        return (s, s) if isinstance(s, int) else (s[0], s[1])


@dataclass
class MaskConfig:
    type: str = "random"  # random | block | grid (mae) | parallel (emae) | uniform | parallel_uniform (umae)
    ratio: float = 0.75
    secondary_ratio: float = 0.25  # uniform masks: share of the kept tokens replaced by a mask token (UM-MAE's SM)


@dataclass
class ConsistencyConfig:
    """EMAE's self-consistency loss between parts; used with parallel masks (method emae)."""

    enabled: bool = True  # false: parallel mask without consistency (an ablation)
    weight: float = 1.0  # lambda in loss = reconstruction + lambda * consistency (unverified; paper gives none)
    distance: str = "l1"  # l1 | l2 (squared)


@dataclass
class DataConfig:
    path: str | None = None  # ImageFolder tree, folder of images, shard folder or shard URL; None: the embedded digits
    required: bool = False  # a recipe for real data: a run without data.path stops with one line (no embedded digits)
    scale: list[float] = field(default_factory=lambda: [0.2, 1.0])  # RandomResizedCrop area range
    hflip: bool = True
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: int = 2
    cache: bool = False  # decode every image once into memory before training (small images: CIFAR is 150 MB)
    strict: bool = False  # a corrupt or unreadable file stops the run instead of being skipped
    decode: str = "cpu"  # cpu: workers decode and augment | device: workers read bytes, the GPU decodes (nvJPEG)
    shuffle_buffer: int = 2000  # shards: samples in each stream's shuffle buffer (more mixes better, holds more bytes)
    draft: bool = True  # JPEG: decode at 1/2..1/8 scale (DCT) when the crop is >= 2x the output on both sides
    resize: str = "pil"  # crop resampler: pil (torchvision's numbers) | torch (uint8 bicubic: ~3x faster, within 1 level)
    decoder: str = "auto"  # JPEG decoder of the crop pipeline: pil | simplejpeg (same pixels, ~20% faster; the extra
    # emae[simplejpeg]) | auto (simplejpeg when installed)
    prefetch_factor: int = 2  # batches each loader worker prepares ahead (torch's default)
    device_prefetch: bool = False  # prepare the next batch on the device (side CUDA stream, a thread) during the step


@dataclass
class MonitorConfig:
    """The pre-training monitor (``emae.engine.monitor``): every ``every`` steps, on a fixed set of held-out images."""

    data: str | None = None  # an image folder (ImageFolder tree: labels give the k-NN; any images give RankMe / recon)
    every: int = 0  # optimiser steps between measurements; 0: at the end of every epoch (and always at the end)
    images: int = 2000  # a seeded, class-balanced subset of the folder; half the k-NN bank, half its queries
    k: int = 20  # k-NN neighbours (cosine similarity, votes exp(sim / 0.07), as `emae knn`)
    recon_images: int = 64  # the fixed batch for the reconstruction loss (fixed masks too)
    batch_size: int = 256


@dataclass
class TrainConfig(LoopConfig):
    lr_batch_unit: str = "images"  # what "batch" counts in the lr rule: images | sequences (EMAE: K per image)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    num_vis: int = 8  # images in the reconstruction picture
    compile: bool = False  # torch.compile the model's training forward (pays off on GPUs, not on CPUs)
    tf32: bool = True  # TF32 matmuls for fp32 work on CUDA (Ampere and newer); no effect on CPU
    distributed: str = "auto"  # auto (ddp when launched with several processes) | none | ddp | fsdp
    dist_backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    fsdp_checkpoint: str = "full"  # full: one file gathered on rank 0 | sharded: a folder of per-rank shards
    activation_checkpointing: bool = False  # recompute each Transformer block in backward: less memory, ~30% slower
    # GPU step options (engine/precision.py, models/fused.py), off until a GPU measures them (benchmarks/gpu_check.py)
    compile_mode: str = "default"  # train.compile's mode: default | reduce-overhead (CUDA graphs) | max-autotune | ...
    bf16_params: bool = False  # precision bf16: Linear/conv weights held in bf16 (cast once a step), fp32 masters
    fused_norm: bool = False  # each residual add fused with the next layer norm (one compiled kernel on CUDA)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


@dataclass
class Config(RootConfig):
    method: str = "mae"
    output_dir: str | None = None  # None: runs/<method>-<timestamp>
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        from .checks import validate  # the checks read this module's dataclasses only through the instance

        validate(self)
