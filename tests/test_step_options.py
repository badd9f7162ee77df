"""The GPU step options (train.bf16_params, train.fused_norm, train.compile_mode): each gives the numbers of the
step it replaces (bit for bit on CPU, where none of them is faster), resumes exactly, and refuses the settings it
cannot serve in one line."""

import pytest
import torch

from emae.engine import load_checkpoint, pretrain, read_log
from emae.engine.perf import maybe_compile
from emae.errors import ConfigError
from emae.models import build_model
from emae.models.fused import fused_blocks
from emae.models.vit import transformer_blocks

from helpers import tiny_config, write_images


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    write_images(root, 24, size=20)
    return root


def run(folder, out, *extra, resume=None):
    cfg = tiny_config("train.max_steps=4", "train.batch_size=6", "train.warmup_epochs=0.5", "train.num_vis=2",
                      "train.log_every=1", "data.num_workers=0", *extra,
                      **{"data.path": str(folder), "output_dir": str(out)})
    return pretrain(cfg, resume=resume, progress=False)


def weights(result) -> dict[str, torch.Tensor]:
    return load_checkpoint(result.checkpoint)["model"]


def losses(out) -> list[float]:
    return [r["loss"] for r in read_log(out / "log.jsonl") if r["type"] == "train"]


def test_fused_blocks_equal_timm_blocks_forward_and_backward():
    """With drop path on (training mode, the same RNG), the fused stack is the plain stack, values and grads."""
    torch.manual_seed(0)
    blocks = transformer_blocks(16, 3, 2, 4.0, drop_path=0.3).train()
    norm = torch.nn.LayerNorm(16, eps=1e-6)
    x = torch.randn(4, 7, 16)
    grads = []
    for fused in (False, True):
        blocks.zero_grad()
        xi = x.clone().requires_grad_()
        torch.manual_seed(1)
        y = fused_blocks(blocks, xi, norm) if fused else norm(torch.nn.Sequential(*blocks)(xi))
        (y.square().mean()).backward()
        grads.append((y.detach(), xi.grad, [p.grad.clone() for p in blocks.parameters()]))
    (y0, gx0, gp0), (y1, gx1, gp1) = grads
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1)
    assert all(torch.equal(a, b) for a, b in zip(gp0, gp1))


@pytest.mark.parametrize("method", [["method=mae"], ["method=umae", "mask.type=uniform"]])
def test_fused_norm_run_equals_the_plain_run(folder, tmp_path, method):
    a = run(folder, tmp_path / "a", *method)
    b = run(folder, tmp_path / "b", *method, "train.fused_norm=true")
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert build_model(tiny_config("train.fused_norm=true")).set_fused_norm(True) == 2  # encoder and decoder


def test_bf16_params_equal_bf16_autocast_and_keep_fp32_masters(folder, tmp_path):
    a = run(folder, tmp_path / "a", "train.precision=bf16")
    b = run(folder, tmp_path / "b", "train.precision=bf16", "train.bf16_params=true")
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(wb[k].dtype == torch.float32 for k in wb)  # the masters, not the bf16 working copies
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert (tmp_path / "b" / "reconstruction.png").exists()  # the picture runs on the bf16 weights


def test_bf16_params_resume_exactly(folder, tmp_path):
    straight = run(folder, tmp_path / "a", "train.precision=bf16", "train.bf16_params=true")
    run(folder, tmp_path / "b", "train.precision=bf16", "train.bf16_params=true", "train.stop_after_steps=2")
    second = run(folder, tmp_path / "b", "train.precision=bf16", "train.bf16_params=true", resume="auto")
    wa, wb = weights(straight), weights(second)
    assert second.global_step == 4 and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bf16_params_weights_are_bf16_and_masters_update(tiny):
    from emae.engine.optim import build_optimizer
    from emae.engine.precision import MasterWeights

    model = build_model(tiny())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masters = MasterWeights(model)
    assert model.encoder.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert model.encoder.norm.weight.dtype == torch.float32 and model.encoder.cls_token.dtype == torch.float32
    opt = masters.optimizer(lambda m: build_optimizer(m, tiny().train, 1e-2), model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 3, 16, 16)).loss.backward()
    opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    qkv = "encoder.blocks.0.attn.qkv.weight"
    assert after[qkv].dtype == torch.float32 and not torch.equal(after[qkv], before[qkv])
    assert torch.equal(model.encoder.blocks[0].attn.qkv.weight, after[qkv].bfloat16())  # rounded from the master
    model.load_state_dict(before)  # loading sets the masters too
    assert torch.equal(model.state_dict()[qkv], before[qkv])


@pytest.mark.parametrize("overrides,message", [
    (["train.bf16_params=true"], "train.bf16_params: True is not allowed; needs train.precision=bf16"),
    (["train.bf16_params=true", "train.precision=bf16", "train.accum_iter=2"], "use train.accum_iter=1"),
    (["train.compile_mode=max-autotune"], "needs train.compile=true"),
    (["train.compile=true", "train.compile_mode=fast"], "choose one of"),
    (["train.fused_norm=true", "train.compile=true"], "train.compile fuses these already"),
])
def test_impossible_step_options_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")) as e:
        tiny_config(*overrides)
    assert "\n" not in str(e.value)


def test_compile_mode_reaches_torch_compile(monkeypatch):
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.update(kw) or model)
    model = torch.nn.Linear(2, 2)
    assert maybe_compile(model, False, "max-autotune") is model and not seen
    maybe_compile(model, True, "reduce-overhead")
    assert seen == {"mode": "reduce-overhead"}
    maybe_compile(model, True, "default")
    assert seen == {"mode": None}
