"""Resume continues the run it says it continues: the config saved in the run, changed only where a run may change
(or loudly, with --force-config); it says which checkpoint and step it took; the log keeps each step once."""

import re
import signal

import pytest
import torch
import yaml

from emae.cli.main import main
from emae.engine import list_checkpoints, load_checkpoint, read_log

from crashkit import finish, logged_step, start, train_steps, wait_for
from helpers import TINY, write_images

TINY_ARGS = [a for a in TINY if not a.startswith("model.img_size")]  # the recipe's 32 px stay


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    write_images(root, 40, size=20)
    return root


def test_cifar_recipe_run_stopped_by_sigterm_continues_with_the_printed_hint(data, tmp_path, capsys):
    """The CIFAR recipe with a tiny model, non-default batch (12: 3 steps an epoch) and steps (9), 2 loader workers:
    SIGTERM, then the command the run prints; the result is bit-identical to an uninterrupted run."""
    recipe = ["--config", "mae_vit_tiny_p4_cifar10", *TINY_ARGS, "train.batch_size=12", "train.max_steps=9",
              "train.log_every=1", "train.num_vis=0"]
    straight = tmp_path / "straight"
    assert main(["pretrain", "--data", str(data), "--output", str(straight), "--no-progress", *recipe]) == 0
    out = tmp_path / "run"
    proc = start(data, out, run=recipe, step_sleep=0.4)
    wait_for(proc, lambda: logged_step(out) >= 4)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stderr[-2000:]
    hint = stdout.split("continue with: ")[1].strip()
    assert hint == f"emae pretrain --output {out} --resume auto"
    capsys.readouterr()
    assert main([*hint.split()[1:], "--no-progress"]) == 0
    stopped = list_checkpoints(out)[1]  # the one SIGTERM wrote, then the final one
    assert f"resuming {stopped}: step {load_checkpoint(stopped)['global_step']}" in capsys.readouterr().out
    a, b = (load_checkpoint(p / "checkpoint-00000009.pt") for p in (straight, out))
    assert b["config"]["data"]["path"] == str(data) and b["config"]["train"]["batch_size"] == 12
    assert {**a["config"], "output_dir": None} == {**b["config"], "output_dir": None}
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert train_steps(out) == list(range(1, 10))


def run(*args: str) -> int:
    return main(["pretrain", "--no-progress", *args])


def test_resume_auto_takes_the_runs_config_and_changes_only_what_may_change(data, tmp_path, capsys):
    out = str(tmp_path / "run")
    threads = torch.get_num_threads()
    try:
        # no checkpoint yet (a run killed before its first): --resume auto starts the run afresh
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "log.jsonl").write_text('{"type": "train", "step": 1, "loss": 9.0}\n')
        assert run("--data", str(data), "--output", out, "--resume", "auto", *TINY, "train.batch_size=4",
                   "train.max_steps=6", "train.stop_after_steps=3", "train.log_every=1", "train.num_vis=0",
                   "data.num_workers=0", "train.threads=2") == 0
        assert "cpu, 2 threads; run" in capsys.readouterr().out and torch.get_num_threads() == 2
        start_record = read_log(tmp_path / "run" / "log.jsonl")[0]
        assert start_record["type"] == "start" and start_record["threads"] == 2

        # keys a resumed run keeps: one line naming the key, nothing run
        for change, words in (("model.depth=3", "model.depth: the run .* has 2, not 3; a resumed run keeps its config"),
                              ("train.max_steps=2", "train.max_steps: the run .* has 6, not 2; a run can only be made "
                                                    "longer"),
                              ("train.batch_size=8", "train.batch_size: .* has 4, not 8; the global batch")):
            assert run("--output", out, "--resume", "auto", change) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("emae: error: ")
            assert re.search(words, err), err

        # no --data, no batch size: they come from the run; a longer run and other threads may change
        assert run("--output", out, "--resume", "auto", "train.max_steps=8", "train.threads=1") == 0
        printed = capsys.readouterr().out
        assert (f"resuming {out}/checkpoint-00000003.pt: step 3, epoch 0, with the config saved in it; changed: "
                f"train.threads 2 -> 1, train.max_steps 6 -> 8") in printed
        assert "cpu, 1 threads" in printed and "done: 8 steps" in printed
        saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
        assert saved["data"]["path"] == str(data) and saved["train"]["batch_size"] == 4
        assert saved["model"]["depth"] == 2 and saved["train"]["max_steps"] == 8

        # a finished run says so, with its last logged loss (not "loss nan")
        loss = [r["loss"] for r in read_log(tmp_path / "run" / "log.jsonl") if r["type"] == "train"][-1]
        assert run("--output", out, "--resume", "auto") == 0
        assert f"already finished: 8 steps, loss {loss:.4f} (last logged)" in capsys.readouterr().out

        # --force-config changes what a resumed run keeps, and says so loudly
        assert run("--output", out, "--resume", "auto", "--force-config", "train.max_steps=9", "train.lr=0.01",
                   "train.weight_decay=0.1") == 0
        err = capsys.readouterr().err
        assert "emae: warning: --force-config: 3 changed config keys" in err
        assert "train.lr None -> 0.01" in err and "train.weight_decay 0.05 -> 0.1" in err
        assert train_steps(tmp_path / "run") == list(range(1, 10))

        # a run killed before its first checkpoint starts over with its own config, not the defaults
        (tmp_path / "early").mkdir()
        (tmp_path / "early" / "config.yaml").write_text((tmp_path / "run" / "config.yaml").read_text())
        assert run("--output", str(tmp_path / "early"), "--resume", "auto", "train.max_steps=1") == 0
        assert f"restarting {tmp_path / 'early'} from step 0" in capsys.readouterr().out
        again = yaml.safe_load((tmp_path / "early" / "config.yaml").read_text())
        assert again["data"]["path"] == str(data) and again["train"]["batch_size"] == 4
    finally:
        torch.set_num_threads(threads)
