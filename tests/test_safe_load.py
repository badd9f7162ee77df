"""Files from strangers run no code: every checkpoint read is weights-only (a pickle that would write a file is
refused in one line, and no file appears) unless the user says it trusts the file; emae's own checkpoints, old
and new, and the official MAE ones load without that."""

import argparse
import fractions
import pickle

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

import emae
from emae.cli.main import main
from emae.engine import load_checkpoint
from emae.engine.checkpoint import FORMAT, FORMAT_VERSION, rng_state, set_rng_state
from emae.errors import UnsafeCheckpointError
from emae.interop.official import to_official
from emae.models import build_model

from helpers import TINY, tiny_config


class Payload:
    """Unpickling this writes ``marker``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def crafted(path, marker):
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "config": {}, "model": {"x": Payload(marker)}}, path)
    return path


def refused(err: str, marker) -> None:
    assert not marker.exists(), "the payload ran"
    assert err.count("\n") <= 1 and "holds exec, which a weights-only load refuses" in err, err
    assert "--trust-checkpoint" in err


COMMANDS = {  # every command that reads a checkpoint
    "knn": lambda f, tmp: ["knn", f, "--data", tmp],
    "linprobe": lambda f, tmp: ["linprobe", f, "--data", tmp],
    "finetune": lambda f, tmp: ["finetune", f, "--data", tmp],
    "visualize": lambda f, tmp: ["visualize", f, "--data", tmp],
    "consistency": lambda f, tmp: ["consistency", f, "--data", tmp],
    "export": lambda f, tmp: ["export", f, "--to", "timm", "--output", f"{tmp}/x.pth"],
    "pretrain-resume": lambda f, tmp: ["pretrain", "--resume", f],
    "pretrain-init": lambda f, tmp: ["pretrain", "--init", f, "--output", f"{tmp}/run", "--no-progress", *TINY,
                                     "train.max_steps=1", "data.num_workers=0"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_crafted_pickle_runs_no_code(tmp_path, capsys, command):
    marker = tmp_path / "marker"
    path = crafted(tmp_path / "evil.pth", marker)
    assert main(COMMANDS[command](str(path), str(tmp_path))) == 2
    refused(capsys.readouterr().err, marker)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp.save in one process, as intended
def test_a_crafted_pickle_in_the_api_a_timm_file_and_a_sharded_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    with pytest.raises(UnsafeCheckpointError) as e:
        emae.load(crafted(tmp_path / "evil.pth", marker))
    refused(str(e.value), marker)
    torch.save({"state_dict": {"blocks.0.norm1.weight": Payload(marker)}}, tmp_path / "timm.pth")  # timm's layout
    with pytest.raises(UnsafeCheckpointError) as e:
        emae.load(tmp_path / "timm.pth")
    refused(str(e.value), marker)
    folder = tmp_path / "checkpoint-00000004.dcp"  # sharded: torch.distributed.checkpoint pickles its metadata
    state = {"model": {"w": torch.ones(2)},
             "optimizer": {"state": {"w": {"step": torch.ones(())}}, "param_groups": [{"lr": 0.1, "params": ["w"]}]}}
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    torch.save({"format": FORMAT, "version": FORMAT_VERSION}, folder / "meta.pt")
    assert load_checkpoint(folder)["optimizer"]["param_groups"][0]["params"] == [0]  # a genuine one loads ...
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafeCheckpointError) as e:  # ... a crafted one does not
        load_checkpoint(folder)
    refused(str(e.value), marker)


def test_a_crafted_hugging_face_folder_runs_no_code(tmp_path):
    pytest.importorskip("transformers")
    from emae.interop.export import export
    from emae.interop.load import Loaded

    cfg = tiny_config()
    export(Loaded("tiny", "emae", cfg, build_model(cfg).state_dict()), "hf", tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    marker = tmp_path / "marker"
    torch.save({"vit.embeddings.cls_token": Payload(marker)}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError) as e:
        emae.load(tmp_path / "hf")
    refused(str(e.value), marker)


def test_trusted_files_and_the_harmless_objects_real_checkpoints_hold(tmp_path, capsys):
    """An official MAE training checkpoint (argparse.Namespace, numpy scalars) loads as it is; another object
    needs --trust-checkpoint / trust=True, and then loads."""
    model = build_model(tiny_config())
    official = {"model": to_official(model.state_dict()), "args": argparse.Namespace(lr=1e-3, input_size=16),
                "epoch": 799, "metric": np.float64(0.5)}
    torch.save(official, tmp_path / "official.pth")
    assert isinstance(emae.load(tmp_path / "official.pth", num_heads=2), emae.MaskedAutoencoder)
    torch.save({**official, "ratio": fractions.Fraction(1, 3)}, tmp_path / "other.pth")
    with pytest.raises(UnsafeCheckpointError, match="holds fractions.Fraction, which a weights-only"):
        emae.load(tmp_path / "other.pth", num_heads=2)
    assert isinstance(emae.load(tmp_path / "other.pth", trust=True, num_heads=2), emae.MaskedAutoencoder)
    args = ["export", str(tmp_path / "other.pth"), "--to", "safetensors", "--output", str(tmp_path / "x.safetensors"),
            "--num-heads", "2"]
    assert main(args) == 2 and "fractions.Fraction" in capsys.readouterr().err
    assert main([*args, "--trust-checkpoint"]) == 0 and (tmp_path / "x.safetensors").is_file()


def test_format_1_checkpoints_load_safely_and_restore_every_rng(tmp_path):
    """Format 1 kept numpy's RNG state as numpy's tuple (an array inside); format 2 keeps it as a tensor. Both load
    weights-only and restore it."""
    np.random.seed(3)
    new, old = rng_state(), np.random.get_state()  # the same state in both formats
    expected = np.random.random(4).tolist()
    assert isinstance(new["numpy"]["key"], torch.Tensor)
    for version, rng in ((1, {**new, "numpy": old}), (2, new)):
        torch.save({"format": FORMAT, "version": version, "config": {}, "rng": rng}, tmp_path / f"v{version}.pt")
        np.random.seed(99)
        set_rng_state(load_checkpoint(tmp_path / f"v{version}.pt")["rng"])
        assert np.random.random(4).tolist() == expected, version
