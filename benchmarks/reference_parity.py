"""Parity with UM-MAE's reference code: the same weights, images and masks in the reference's models and emae's.

For UM-MAE Swin-T (``models_mae_swin.py``), UM-MAE PVT-S (``models_mae_pvt.py``), SimMIM Swin-T
(``models_simmim_swin.py``) and SimMIM PVT-S (``models_simmim_pvt.py``), all at 256 px: the reference model is built
with its own constructor, its weights are perturbed (so that no zero bias or unit norm hides a mismatch) and copied
into emae's model from the shipped recipe; both run in eval mode on the same images and masks. Reported: the max
absolute difference of the encoder outputs, the predictions and the loss. The fine-tuning models (``models_swin.py``,
``models_pvt.py``) get a UM-MAE checkpoint's weights as emae's fine-tuning loader places them: the logits.

UM-MAE's reference decoder adds the positions of the kept patches in raster order to the tokens in compact order
(SPEC §3 "Caution"); emae gives every token its true position. Both agree where the two orders coincide (every row of
2x2 cells keeps its tokens in the same row of the cell), so the full-model figures use such masks; on arbitrary
uniform masks the encoder is compared, and the full model with the reference's decoder positions fed to emae's
decoder (``ids_restore`` of the kept patches sorted in raster order), which shows the order is the only difference.
The reference draws its secondary mask with ``torch.rand`` inside the encoder; the script hands it noise that picks
emae's secondary-masked tokens.

The reference needs einops (``pip install -e ".[reference]"``) and imports APIs of an old timm; they are patched at
run time here (``timm.models.layers``, ``Block(qk_scale=...)``, ``np.float``, ``from turtle import pos``); its code
is not copied.

    git -C UM-MAE-MIRROR archive HEAD models_mae_swin.py models_mae_pvt.py models_simmim_swin.py models_swin.py \\
        models_simmim_pvt.py models_pvt.py util | tar -x -C /tmp/umae-ref
    python benchmarks/reference_parity.py --umae-src /tmp/umae-ref --ref-commit cb7776b
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import types
import warnings
from pathlib import Path

import torch

import emae
from emae.config import load_config
from emae.masks import Mask, random_mask, uniform_mask
from emae.masks.uniform import mask_from_kept, secondary_from_noise

CASES = {  # name: (reference module, constructor, emae recipe, kind)
    "umae-swin_t": ("models_mae_swin", "mae_swin_tiny_256", "umae_swin_t_p16_in1k_256", "umae"),
    "umae-pvt_s": ("models_mae_pvt", "mae_pvt_small_256", "umae_pvt_s_p16_in1k_256", "umae"),
    "simmim-swin_t": ("models_simmim_swin", "simmim_swin_tiny_256", "simmim_swin_t_p16_in1k_256", "simmim"),
    "simmim-pvt_s": ("models_simmim_pvt", "simmim_pvt_small_256", "simmim_pvt_s_p16_in1k_256", "simmim"),
    # fine-tuning: a UM-MAE checkpoint's classifier (window 16, ratios [8,4,2,1]) vs models_swin.py / models_pvt.py
    "finetune-swin_t": ("models_swin", "swin_tiny_256", "umae_swin_t_p16_in1k_256", "finetune"),
    "finetune-pvt_s": ("models_pvt", "pvt_small_256", "umae_pvt_s_p16_in1k_256", "finetune"),
}


# ---------------------------------------------------------------- importing the reference


def import_reference(src: Path, names: list[str]) -> dict[str, types.ModuleType]:
    """The reference's model modules, imported against today's timm and numpy with run-time patches."""
    import numpy as np
    import timm.models.vision_transformer as vit

    sys.modules.setdefault("turtle", types.ModuleType("turtle")).pos = None  # an unused stray import
    np.float = float  # util/pos_embed.py uses np.float (removed in numpy 1.24)
    original = vit.Block

    class Block(original):  # timm >= 1.0 dropped qk_scale (the reference passes None)
        def __init__(self, *args, qk_scale=None, **kwargs):
            super().__init__(*args, **kwargs)

    sys.path.insert(0, str(src))
    vit.Block = Block
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # timm.models.layers is deprecated, still importable
            return {name: __import__(name) for name in names}
    finally:
        vit.Block = original


def commit_of(src: Path, given: str | None) -> str:
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (pass --ref-commit)"


# ---------------------------------------------------------------- weights


def emae_key(key: str, depths: list[int]) -> str:
    """A reference state-dict key -> emae's (flat block i -> stage s, block j; decoder_* -> decoder.*)."""
    head, _, rest = key.partition(".")
    if key in ("vis_mask_token", "pos_embed"):
        return f"encoder.{'mask_token' if key == 'vis_mask_token' else key}"
    if head == "patch_embed":
        return f"encoder.stem.{rest}"
    if head == "norm":
        return f"encoder.norm.{rest}"
    if head in ("fc_norm", "head"):
        return key
    if head == "blocks":
        i, _, tail = rest.partition(".")
        stage = next(s for s in range(4) if int(i) < sum(depths[:s + 1]))
        j = int(i) - sum(depths[:stage])
        if tail.startswith("downsample."):
            return f"encoder.stages.{stage}.{tail}"
        return f"encoder.stages.{stage}.blocks.{j}.{tail.replace('attn.posmlp.', 'attn.pos_mlp.')}"
    if key.startswith("decoder_"):
        return "decoder." + key[len("decoder_"):]
    raise KeyError(key)


def copy_weights(ref: torch.nn.Module, model: emae.MaskedAutoencoder, umae: bool) -> None:
    """Perturb the reference's weights and copy them into emae's model; every emae weight must be covered."""
    depths = [len(stage.blocks) for stage in model.encoder.stages]
    own = model.state_dict()
    taken = {}
    with torch.no_grad():
        for key, value in ref.state_dict().items():
            if key.endswith("pos_embed"):  # fixed sin-cos: must already agree
                target = emae_key(key, depths)
                assert torch.allclose(own[target].view_as(value), value, atol=1e-6), f"{key} differs"
                taken[target] = value.view_as(own[target])
                continue
            value.add_(torch.randn_like(value) * 0.02)
            if key == "mask_token":
                target = "decoder.mask_token" if umae else "encoder.mask_token"
            else:
                target = emae_key(key, depths)
            taken[target] = value.reshape(own[target].shape)
    missing = sorted(set(own) - set(taken))
    assert not missing, f"emae weights without a reference counterpart: {missing[:5]}"
    model.load_state_dict(taken, strict=True)


# ---------------------------------------------------------------- masks


def row_consistent_keep(batch: int, grid: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Uniform kept tokens whose raster order is their compact order: each row of cells keeps tokens of one row."""
    gh, gw = grid
    da = torch.randint(0, 2, (batch, gh // 2, 1), generator=gen)
    db = torch.randint(0, 2, (batch, gh // 2, gw // 2), generator=gen)
    a = torch.arange(gh // 2).view(1, -1, 1)
    b = torch.arange(gw // 2).view(1, 1, -1)
    return ((2 * a + da) * gw + 2 * b + db).flatten(1)


def umae_mask(batch: int, grid: tuple[int, int], gen: torch.Generator, consistent: bool, secondary: float) -> Mask:
    if not consistent:
        return uniform_mask(batch, grid, generator=gen, secondary_ratio=secondary)
    keep = row_consistent_keep(batch, grid, gen)
    sec = secondary_from_noise(torch.rand(keep.shape, generator=gen), secondary)
    return mask_from_kept(keep, grid[0] * grid[1], secondary=sec)


def reference_noise(mask: Mask) -> torch.Tensor:
    """Noise for the reference's in-encoder ``torch.rand(N, L)`` that secondarily masks emae's tokens: the reference
    keeps the kept tokens with the smallest noise visible, so emae's secondary ones get the largest."""
    noise = torch.rand(mask.mask.shape) * 0.5
    if mask.secondary is not None:
        noise = noise.scatter(1, mask.ids_keep, noise.gather(1, mask.ids_keep) + 0.5 * mask.secondary)
    return noise


@contextlib.contextmanager
def rand_returns(noise: torch.Tensor):
    original = torch.rand
    torch.rand = lambda *a, **k: noise.to(k.get("device") or noise.device)
    try:
        yield
    finally:
        torch.rand = original


# ---------------------------------------------------------------- comparisons


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def compare_umae(ref, model, imgs: torch.Tensor, gen: torch.Generator, secondary: float) -> dict[str, float]:
    grid = model.grid
    out: dict[str, float] = {}
    for consistent in (True, False):
        mask = umae_mask(imgs.shape[0], grid, gen, consistent, secondary)
        removed = mask.mask.bool()
        noise = reference_noise(mask).to(imgs.dtype)
        with torch.no_grad(), rand_returns(noise):
            ref_latent = ref.forward_encoder(imgs, removed)
        with torch.no_grad(), rand_returns(noise):
            ref_loss, ref_pred, _ = ref(imgs, removed)
        with torch.no_grad():
            latent = model.encoder.encode_masked(imgs, mask)
            if consistent:
                mine = model(imgs, mask=mask)
                pred, loss = mine.pred, mine.loss
            else:  # the reference's decoder positions: the kept patches in raster order
                raster = mask_from_kept(mask.ids_keep.sort(dim=1).values, mask.mask.shape[1])
                pred = model.decoder(latent, raster.ids_restore)
                target = model.loss.target(imgs)
                loss = model.loss(pred, target, mask)["loss"]
                shown = model(imgs, mask=mask).loss  # emae as it is: true positions
        n, kept = mask.ids_keep.shape
        ref_masked, ref_visible = ref_pred[:, kept:], ref_pred[:, :kept]
        masked = pred[removed].view(n, -1, pred.shape[-1])  # raster order, as the reference appends mask tokens
        ids = mask.ids_keep if consistent else raster.ids_keep
        visible = pred.gather(1, ids.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))
        tag = "row-consistent masks" if consistent else "any uniform mask"
        out[f"encoder output ({tag})"] = maxdiff(latent.flatten(1, 2), ref_latent)
        suffix = "" if consistent else ", reference decoder positions"
        out[f"predictions, removed patches ({tag}{suffix})"] = maxdiff(masked, ref_masked)
        out[f"predictions, kept patches ({tag}{suffix})"] = maxdiff(visible, ref_visible)
        out[f"loss ({tag}{suffix})"] = maxdiff(loss, ref_loss)
        if not consistent:
            out["loss (any uniform mask, emae's true positions: differs by design)"] = maxdiff(shown, ref_loss)
    return out


def compare_simmim(ref, model, imgs: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
    mask = random_mask(imgs.shape[0], model.grid, 0.75, generator=gen)
    with torch.no_grad():
        ref_latent = ref.forward_encoder(imgs, mask.mask.bool())
        ref_loss, ref_pred, _ = ref(imgs, mask.mask.bool())
        latent = model.encoder.encode_masked(imgs, mask)
        mine = model(imgs, mask=mask)
    return {"encoder output": maxdiff(latent.flatten(1, 2), ref_latent),
            "predictions, every patch": maxdiff(mine.pred, ref_pred), "loss": maxdiff(mine.loss, ref_loss)}


def compare_finetune(ref, recipe: str, args: argparse.Namespace, dtype: torch.dtype) -> dict[str, float]:
    """A UM-MAE checkpoint (random, perturbed weights) through emae's fine-tuning loader, and the same weights in the
    reference's fine-tuning model (its main_finetune.py loads the checkpoint's keys by name)."""
    from emae.eval.pyramid import pyramid_classifier
    from emae.interop.load import Loaded

    cfg = load_config(recipe, ["train.precision=fp32"])
    pre = emae.build_model(cfg)
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    clf = pyramid_classifier(Loaded("memory", "emae", cfg, pre.state_dict()), 1000)[0].eval()
    with torch.no_grad():
        for p in [*clf.fc_norm.parameters(), *clf.head.parameters()]:
            p.add_(torch.randn_like(p) * 0.02)
    depths = [len(stage.blocks) for stage in clf.encoder.stages]
    own = clf.state_dict()
    ref.load_state_dict({k: own[emae_key(k, depths)].reshape(v.shape) for k, v in ref.state_dict().items()})
    clf.to(dtype)
    ref.to(dtype)
    if isinstance(getattr(ref, "pos_hw", None), torch.Tensor):
        ref.pos_hw = ref.pos_hw.to(dtype)
    imgs = torch.randn(args.batch, 3, 256, 256, generator=torch.Generator().manual_seed(args.seed)).to(dtype)
    with torch.no_grad():
        return {"logits (fine-tuning model)": maxdiff(clf(imgs), ref(imgs))}


def run_case(name: str, modules: dict, args: argparse.Namespace, dtype: torch.dtype) -> dict[str, float]:
    module, ctor, recipe, kind = CASES[name]
    torch.manual_seed(args.seed)
    if kind == "finetune":
        return compare_finetune(getattr(modules[module], ctor)(num_classes=1000).eval(), recipe, args, dtype)
    umae = kind == "umae"
    kwargs = {"norm_pix_loss": umae} | ({"vis_mask_ratio": args.secondary} if umae else {})
    ref = getattr(modules[module], ctor)(**kwargs).eval()
    cfg = load_config(recipe, ["train.precision=fp32", f"mask.secondary_ratio={args.secondary}"])
    model = emae.build_model(cfg).eval()
    copy_weights(ref, model, umae)
    ref.to(dtype)
    model.to(dtype)
    for attr in ("kernel", "pos_hw"):  # plain tensors the reference keeps outside its state dict
        if isinstance(getattr(ref, attr, None), torch.Tensor):
            setattr(ref, attr, getattr(ref, attr).to(dtype))
    gen = torch.Generator().manual_seed(args.seed)
    imgs = torch.randn(args.batch, 3, 256, 256, generator=gen).to(dtype)
    return compare_umae(ref, model, imgs, gen, args.secondary) if umae else compare_simmim(ref, model, imgs, gen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--umae-src", required=True, type=Path, help="a checkout of implus/UM-MAE (its models_*.py, util/)")
    ap.add_argument("--ref-commit", help="the reference's commit, printed with the figures (default: git rev-parse)")
    ap.add_argument("--cases", nargs="*", choices=sorted(CASES), default=list(CASES))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--secondary", type=float, default=0.25, help="secondary-mask ratio (--vis_mask_ratio, 0.25)")
    ap.add_argument("--dtypes", nargs="*", default=["float32", "float64"], choices=["float32", "float64"])
    ap.add_argument("--tolerance", type=float, default=1e-5, help="fp32 target for every figure but 'by design'")
    args = ap.parse_args(argv)
    try:
        import einops  # noqa: F401 - the reference's dependency
    except ImportError:
        ap.error('the reference needs einops: pip install -e ".[reference]"')
    needed = sorted({f"{CASES[c][0]}.py" for c in args.cases} | {"util/pos_embed.py"})
    missing = [f for f in needed if not (args.umae_src / f).is_file()]
    if missing:
        ap.error(f"--umae-src {args.umae_src}: no {', '.join(missing)} there (a checkout of implus/UM-MAE?)")
    modules = import_reference(args.umae_src, sorted({CASES[c][0] for c in args.cases}))
    print(f"reference implus/UM-MAE @ {commit_of(args.umae_src, args.ref_commit)}; emae {emae.__version__}, torch "
          f"{torch.__version__}; 256 px, batch {args.batch}, seed {args.seed}, secondary ratio {args.secondary}")
    worst = 0.0
    for name in args.cases:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for what, diff in run_case(name, modules, args, dtype).items():
                print(f"  {name:<15} {dtype_name:<8} {what:<78} max |diff| {diff:.2e}", flush=True)
                if dtype == torch.float32 and "by design" not in what:
                    worst = max(worst, diff)
    verdict = "met" if worst <= args.tolerance else "NOT met"
    print(f"largest fp32 difference {worst:.2e}: target <= {args.tolerance:.0e} {verdict}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
