"""Crash-safe resumable training: SIGKILL after the first checkpoint, ``--resume``, bit-identical weights.

The killed run is a real ``pact-pyro train`` subprocess; the uninterrupted reference and the resumed run go
through the same CLI in this process (1 thread everywhere), which keeps the test at one interpreter start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pact_pyro import cli
from pact_pyro.checkpoint import load_checkpoint
from tests.common import assert_identical, crash_at_step, kill_after_first_checkpoint

# depth 14: L = 2 units per block, so halting latents (and their RNG draws) are part of the trajectory.
# 48 examples / batch 16 = 3 steps per epoch, 2 epochs = 6 steps; a checkpoint every 2 steps.
ARGS = [
    "train", "--dataset", "mnist", "--depth", "14", "--train-subset", "48", "--batch-size", "16",
    "--epochs", "2", "--seed", "3", "--device", "cpu", "--checkpoint-every", "2",
    "--no-eval", "--no-progress",
]  # fmt: skip
TOTAL = 6


def _argv(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [*ARGS, "--data-root", str(data_root), "--out", str(out), *extra]


def test_sigkill_then_resume_is_bit_identical(tiny_root, tmp_path, one_thread, capsys):
    full, killed = tmp_path / "full", tmp_path / "killed"
    ckpt = killed / "checkpoint.pt"
    kill_after_first_checkpoint(  # the uninterrupted reference runs meanwhile
        _argv(tiny_root, killed), ckpt, lambda: cli.main(_argv(tiny_root, full)) == 0
    )
    partial = load_checkpoint(ckpt)
    assert 0 < partial["step"] < TOTAL, partial["step"]

    # without --resume the existing run directory is refused and left untouched
    with pytest.raises(SystemExit) as exc:
        cli.main(_argv(tiny_root, killed))
    assert exc.value.code == 2 and "already exists" in capsys.readouterr().err
    assert load_checkpoint(ckpt)["step"] == partial["step"]

    assert cli.main(_argv(tiny_root, killed, "--resume")) == 0
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(ckpt)
    assert a["step"] == b["step"] == TOTAL
    for key in ("model", "guide", "optim", "rng"):
        assert_identical(a[key], b[key], key)
    # the metrics log holds each step once, with the same losses
    la = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [r["step"] for r in la] == [TOTAL]  # log_every 50: the last step only
    assert [r["loss"] for r in lb] == [r["loss"] for r in la]
    print(f"killed at step {partial['step']} of {TOTAL}; resumed weights bit-identical")


def test_resume_refuses_other_settings(tiny_root, tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    argv = [a if a != "2" else "1" for a in _argv(tiny_root, out)]  # --epochs 1 ... --checkpoint-every 1
    argv[argv.index("--epochs") + 1] = "0.5"
    assert cli.main(argv) == 0
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--resume", "--lr", "0.01"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "cannot resume" in err and "lr=0.002 (now 0.01)" in err, err
    # a finished run resumes to itself; the checkpoint cadence may change
    before = load_checkpoint(out / "checkpoint.pt")
    assert cli.main([*argv, "--resume", "--checkpoint-every", "5"]) == 0
    assert_identical(before["model"], load_checkpoint(out / "checkpoint.pt")["model"])


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro's validation notices the NaN first
def test_nan_loss_keeps_last_good_checkpoint(tiny_root, tmp_path, one_thread, monkeypatch, capsys):
    """A non-finite loss stops the run with one line; the checkpoint on disk is the last good one."""
    from pact_pyro import objective

    calls = {"n": 0}
    real = objective.MAPObjective.differentiable_loss

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss = real(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(objective.MAPObjective, "differentiable_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        cli.main(_argv(tiny_root, out))
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert "loss became nan at step 5" in err and "last good checkpoint: step 4" in err, err
    good = load_checkpoint(out / "checkpoint.pt")
    assert good["step"] == 4
    assert all(bool(v.isfinite().all()) for v in good["model"].values() if v.is_floating_point())


def test_crash_and_resume_with_augmentation_sgd_and_warmup(tiny_root, tmp_path, one_thread, monkeypatch):
    """In-process crash (an exception at step 5) with the other optimizer (SGD + step decay), random-crop
    augmentation drawn from the data generator, and a τ warm-up: resumed weights are still bit-identical."""

    from pact_pyro.train import TrainConfig, train

    cfg = dict(dataset="mnist", depth=14, train_subset=48, batch_size=16, epochs=2.0, seed=1, device="cpu",
               optimizer="sgd", lr=0.05, augment=True, tau_warmup=0.5, checkpoint_every=2)  # fmt: skip
    cfg["data_root"] = str(tiny_root)
    train(TrainConfig(**cfg), tmp_path / "full", progress=False)

    crash_at_step(monkeypatch, 5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(TrainConfig(**cfg), tmp_path / "crashed", progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["step"] == 4
    train(TrainConfig(**cfg), tmp_path / "crashed", progress=False, resume=True)
    a, b = (
        load_checkpoint(tmp_path / "full" / "checkpoint.pt"),
        load_checkpoint(tmp_path / "crashed" / "checkpoint.pt"),
    )
    for key in ("model", "guide", "optim"):
        assert_identical(a[key], b[key], key)
