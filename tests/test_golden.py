"""Behaviour is unchanged where it should be: a short pre-training (``tests/test_resume.py``'s run), a short
fine-tune and a short MAE-protocol linear probe give, bit for bit, the parameters and losses recorded from the code
before the one-loop refactor (``tests/golden/record.py``, on one CPU thread), on each CPU kernel family recorded."""

import json

import pytest
import torch
from safetensors import safe_open

from golden.record import family, golden_file, run_all


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not golden_file("pretrain").exists():
        pytest.skip(f"no golden runs recorded for this CPU's kernel family ({family()}): see tests/golden/record.py")
    threads = torch.get_num_threads()
    try:
        return run_all(tmp_path_factory.mktemp("golden"))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["pretrain", "finetune", "linprobe"])
def test_parameters_and_losses_equal_the_recorded_ones(runs, name):
    with safe_open(str(golden_file(name)), "pt") as f:
        recorded = {k: f.get_tensor(k) for k in f.keys()}
        losses = json.loads(f.metadata()["losses"])
    state = runs[name]["state"]
    assert sorted(state) == sorted(recorded)
    differ = {k: (state[k].float() - recorded[k].float()).abs().max().item() for k in recorded
              if not torch.equal(state[k], recorded[k])}
    assert not differ, f"{len(differ)} tensors differ, e.g. {dict(list(differ.items())[:3])}"
    assert runs[name]["losses"] == losses
