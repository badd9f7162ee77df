"""Pre-training's reconstruction picture, as a loop hook: to the trackers (TensorBoard, W&B) every ``save_every``
epochs, and for the finished run to ``reconstruction.png`` too."""

from __future__ import annotations

import numpy as np
import torch

from ..config import Config
from ..data import eval_transform
from ..viz import reconstruction_image
from .device import autocast
from .distributed import DistInfo
from .loop import Hook, Loop
from .sharded import plain_model


def vis_batch(cfg: Config, source, device: torch.device) -> torch.Tensor | None:
    """A fixed, evenly spread set of un-augmented images for the reconstruction picture."""
    n = min(cfg.train.num_vis, len(source))
    if n == 0:
        return None
    tf = eval_transform(cfg.model.image_size, cfg.data.mean, cfg.data.std)
    preview = getattr(source, "preview_indices", None)  # shards: from the first shard only (one to read)
    picks = preview(n) if preview else np.linspace(0, len(source) - 1, n).round().astype(int)
    return torch.stack([tf(source.fetch(int(i))[0]) for i in picks]).to(device)


class PictureHook(Hook):
    def __init__(self, cfg: Config, source, info: DistInfo) -> None:
        self.cfg, self.source, self.info = cfg, source, info
        self.images: torch.Tensor | None = None  # chosen once

    def after_epoch(self, loop: Loop) -> None:
        if not loop.done and loop.pos.epoch % self.cfg.train.save_every == 0:
            self.draw(loop)  # the finished run's is drawn at the end

    def on_end(self, loop: Loop) -> None:
        if loop.done:
            self.draw(loop, final=True)

    def draw(self, loop: Loop, final: bool = False) -> None:
        """All ranks call (FSDP gathers the model); rank 0 draws."""
        cfg, t = self.cfg, self.cfg.train
        if not (final or t.tensorboard or t.wandb):
            return
        if self.images is None:
            self.images = vis_batch(cfg, self.source, self.info.device)
        if self.images is None:
            return
        shown = plain_model(loop.model, cfg, self.info)  # FSDP: gathered into a fresh model on rank 0
        if not self.info.is_main:
            return
        with autocast(self.info.device, t.precision):  # as trained (train.bf16_params: bf16 weights need it)
            image = reconstruction_image(shown, self.images, cfg.data.mean, cfg.data.std, seed=t.seed,
                                         scale=max(1, 128 // max(cfg.model.image_size)))
        if final:
            image.save(loop.out / "reconstruction.png")
        loop.log.image("reconstruction", image, loop.pos.step)
