"""Reconstruction pictures: original | masked input | reconstruction | reconstruction with visible patches pasted.

A model trained with ``norm_pix_loss`` predicts each patch normalised by its own mean and variance, so the
prediction must be un-normalised for display. Two choices:

- ``"true"``: the masked patch's own statistics. Leaks the target; for display only.
- ``"visible"``: statistics estimated from the visible patches nearby (Gaussian-weighted by grid distance,
  sigma of one patch), using nothing the model could not see.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from ..patches import patchify, unpatchify

STATS = ("true", "visible")
COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")
SHORT_COLUMNS = ("original", "masked", "recon.", "recon. + visible")


def patch_stats(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True) + eps).sqrt()
    return mean, std


def visible_stats(
    patches: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int], sigma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch (mean, std) where each patch gets a distance-weighted average over *visible* patches only."""
    mean, std = patch_stats(patches)
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], dim=1).float().to(patches.device)
    weight = torch.exp(-torch.cdist(coords, coords).pow(2) / (2 * sigma**2))  # (L, L)
    weight = weight.unsqueeze(0) * (1 - mask).unsqueeze(1)  # only visible sources
    weight = weight / weight.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return weight @ mean, weight @ std


def to_pixels(pred: torch.Tensor, imgs: torch.Tensor, mask: torch.Tensor, patch_size: int, grid: tuple[int, int],
              norm_pix: bool, stats: str = "true") -> torch.Tensor:
    """Predictions (B, L, P) in the loss's target space -> images in the input's (normalised) space."""
    if not norm_pix:
        return unpatchify(pred, patch_size, grid, imgs.shape[1])
    target = patchify(imgs, patch_size)
    if stats == "true":
        mean, std = patch_stats(target)
    elif stats == "visible":
        mean, std = visible_stats(target, mask, grid)
    else:
        raise ValueError(f"stats: {stats!r} is not one of {STATS}")
    return unpatchify(pred * std + mean, patch_size, grid, imgs.shape[1])


@torch.no_grad()
def reconstruction_rows(model, imgs: torch.Tensor, mean: list[float], std: list[float], stats: str = "true",
                        generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """(B*4, C, H, W) display images in [0, 1], four per input image."""
    was_training = model.training
    model.eval()
    out = model(imgs, noise=noise, generator=generator)
    model.train(was_training)
    mask = out.mask.mask[:: out.mask.parts]  # first part of each image for multi-part masks
    pred = out.pred[:: out.mask.parts]
    p, grid = model.patch_size, model.grid
    recon = to_pixels(pred.float(), imgs.float(), mask.float(), p, grid, model.loss.norm_pix, stats)
    pix_mask = unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * imgs.shape[1]), p, grid, imgs.shape[1])
    m = torch.tensor(mean, device=imgs.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=imgs.device).view(1, -1, 1, 1)
    shown = lambda x: (x * s + m).clamp(0, 1)  # noqa: E731
    grey = torch.full_like(imgs, 0.5)
    columns = [shown(imgs), shown(imgs) * (1 - pix_mask) + grey * pix_mask, shown(recon),
               shown(imgs * (1 - pix_mask) + recon * pix_mask)]
    return torch.stack(columns, dim=1).flatten(0, 1).cpu()


def save_reconstruction(path: str | Path, model, imgs: torch.Tensor, mean: list[float], std: list[float],
                        stats: str = "true", seed: int = 0, scale: int = 1) -> Path:
    """Write a PNG grid with one row per image. ``scale`` enlarges small images (nearest neighbour)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reconstruction_image(model, imgs, mean, std, stats, seed, scale).save(path)
    return path


def reconstruction_image(model, imgs: torch.Tensor, mean: list[float], std: list[float], stats: str = "true",
                         seed: int = 0, scale: int = 1) -> Image.Image:
    """The labelled grid (one row per image) as a picture; the mask is drawn from ``seed``."""
    g = torch.Generator(device=imgs.device).manual_seed(seed)
    rows = reconstruction_rows(model, imgs, mean, std, stats, generator=g)
    if scale > 1:
        rows = torch.nn.functional.interpolate(rows, scale_factor=scale, mode="nearest")
    if rows.shape[1] == 1:
        rows = rows.expand(-1, 3, -1, -1)
    elif rows.shape[1] == 4:
        rows = rows[:, :3]
    return labelled_grid(rows)


def labelled_grid(rows: torch.Tensor, padding: int = 2) -> Image.Image:
    """The (B*4, 3, H, W) display images as a grid of 4 columns under a header naming each column (shortened
    where a full name does not fit its width)."""
    grid = make_grid(rows, nrow=4, padding=padding, pad_value=1.0)
    body = Image.fromarray(grid.mul(255).add_(0.5).clamp_(0, 255).byte().permute(1, 2, 0).numpy())
    col = rows.shape[-1] + padding
    draw = ImageDraw.Draw(body)
    fits = lambda names, font: all(draw.textlength(n, font=font) <= col - 2 for n in names)  # noqa: E731
    choices = [(n, ImageFont.load_default(size=s)) for s in (11, 9, 7) for n in (COLUMNS, SHORT_COLUMNS)]
    names, font = next((c for c in choices if fits(*c)), choices[-1])
    header = 16
    out = Image.new("RGB", (body.width, body.height + header), "white")
    out.paste(body, (0, header))
    draw = ImageDraw.Draw(out)
    for i, name in enumerate(names):
        draw.text((padding + i * col + col / 2, header / 2 + 1), name, fill="black", font=font, anchor="mm")
    return out
