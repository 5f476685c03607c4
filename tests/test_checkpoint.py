"""Checkpoint files: atomic writes, pickle-free loading, clear errors for every kind of bad file."""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import os
import random
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pact_pyro import checkpoint as ck
from pact_pyro.train import TrainConfig, build, load_run


def _write_run(path: Path, depth: int = 8) -> Path:
    """A run directory with a checkpoint of fresh weights (no training, no data)."""
    cfg = TrainConfig(depth=depth, device="cpu")
    model, guide = build(cfg)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    state = {
        "format": ck.FORMAT, "version": ck.VERSION, "config": dataclasses.asdict(cfg),
        "model": model.state_dict(),
        "guide": guide.state_dict(), "optim": {}, "rng": ck.capture_rng(), "epoch": 0, "epochs_done": 0,
        "step_in_epoch": 0, "step": 0, "world_size": 1,
    }  # fmt: skip
    ck.atomic_save(state, path / "checkpoint.pt")
    return path


def test_round_trip(tmp_path):
    run = _write_run(tmp_path / "run")
    model, guide, cfg = load_run(run, "cpu")
    ref, _ = build(cfg)
    assert cfg.depth == 8 and not model.training
    saved = ck.load_checkpoint(run / "checkpoint.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved["model"][k])
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "config.json"]  # no temporary file left behind


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: the classic pickle payload, harmless here."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_payload_is_refused_and_never_runs(tmp_path, capsys):
    run = _write_run(tmp_path / "run")
    marker = tmp_path / "payload-ran"
    good = torch.load(run / "checkpoint.pt", weights_only=True)
    good["model"]["evil"] = _Payload(marker)
    torch.save(good, run / "checkpoint.pt")  # a checkpoint that looks right but carries code
    with pytest.raises(ck.CheckpointError, match=r"was refused: it holds more than tensors.*posix\.mkdir"):
        ck.load_checkpoint(run / "checkpoint.pt")
    with pytest.raises(ValueError, match="was refused"):
        load_run(run, "cpu")
    from pact_pyro import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", str(run), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("pact-pyro: error: checkpoint") and "refused" in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()
    # the same file does run code under a plain pickle load: the test payload is real
    torch.load(run / "checkpoint.pt", weights_only=False)
    assert marker.is_dir()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated or corrupt"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(os.urandom(4096)), "truncated or corrupt"),
        (lambda p: p.write_text("not a checkpoint\n"), "truncated or corrupt"),
        (lambda p: torch.save({"weights": torch.zeros(3)}, p), "not a pact-pyro checkpoint"),
        (lambda p: torch.save(torch.zeros(3), p), "not a pact-pyro checkpoint"),
        (lambda p: torch.save({"format": ck.FORMAT, "version": 99}, p), "format version 99"),
        (lambda p: torch.save({"format": ck.FORMAT, "version": ck.VERSION}, p), "lacks the entries"),
    ],
    ids=[
        "truncated",
        "empty",
        "random-bytes",
        "text",
        "other-torch-dict",
        "bare-tensor",
        "future-version",
        "partial",
    ],
)
def test_bad_files_give_clear_errors(tmp_path, damage, message):
    run = _write_run(tmp_path / "run")
    damage(run / "checkpoint.pt")
    with pytest.raises(ck.CheckpointError, match=message):
        load_run(run, "cpu")


def test_other_architecture_is_named(tmp_path):
    run = _write_run(tmp_path / "run", depth=14)
    cfg = json.loads((run / "config.json").read_text())
    cfg["depth"] = 8  # config edited, or a checkpoint copied from a deeper run
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ck.CheckpointError, match=r"another architecture: model tensors .* unexpected \(e\.g\. "
    ):
        load_run(run, "cpu")


def test_non_finite_weights_are_refused(tmp_path):
    run = _write_run(tmp_path / "run")
    state = ck.load_checkpoint(run / "checkpoint.pt")
    state["model"]["backbone.stem.weight"][0, 0, 0, 0] = float("nan")
    ck.atomic_save(state, run / "checkpoint.pt")
    with pytest.raises(ck.CheckpointError, match="'backbone.stem.weight' holds NaN/inf"):
        load_run(run, "cpu")


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="has no config.json and checkpoint.pt"):
        load_run(tmp_path, "cpu")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A crash or a full disk in the middle of a save leaves the old file intact and no temporary file."""
    path = tmp_path / "checkpoint.pt"
    ck.atomic_save({"format": ck.FORMAT, "n": torch.arange(3)}, path)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # half of the bytes reach the disk, then ENOSPC
        f.truncate(f.tell() // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="could not write checkpoint .* the previous one is kept") as exc:
        ck.atomic_save({"format": ck.FORMAT, "n": torch.arange(1000)}, path)
    assert exc.value.errno == errno.ENOSPC

    def killed(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise KeyboardInterrupt  # any exception between write and rename

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        ck.atomic_save({"format": ck.FORMAT, "n": torch.arange(1000)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["n"], torch.arange(3))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_rng_round_trip():
    state = ck.capture_rng()
    a = (torch.rand(3), random.random(), np.random.rand(2))
    ck.restore_rng(state)
    b = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


def test_optimizer_state_survives_a_new_process_layout():
    """Adam + one-cycle state saved under stable names loads into a model with other Pyro ids; the next step
    is identical to the uninterrupted one."""
    from pact_pyro.objective import MAPObjective
    from pact_pyro.train import _make_optim

    cfg = TrainConfig(depth=14, device="cpu")
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])

    def fresh():
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide = build(cfg)
        optim = _make_optim(cfg, 10)
        return model, guide, optim, pyro.infer.SVI(model.model, guide, optim, loss=MAPObjective())

    model, guide, optim, svi = fresh()
    for _ in range(3):
        svi.step(x, y)
        optim.step()
    saved = {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "guide": {k: v.clone() for k, v in guide.state_dict().items()},
        "optim": copy.deepcopy(ck.optim_state(optim, {"model": model, "guide": guide})),  # live tensors
        "rng": torch.get_rng_state(),
    }
    svi.step(x, y)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model2, guide2, optim2, svi2 = fresh()
    assert model2.pyro_id != model.pyro_id  # Pyro's param-store names differ
    model2.load_state_dict(saved["model"])
    guide2.load_state_dict(saved["guide"])
    ck.restore_optim(optim2, saved["optim"], {"model": model2, "guide": guide2})
    torch.set_rng_state(saved["rng"])
    svi2.step(x, y)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, expected[k]), k
    with pytest.raises(ck.CheckpointError, match="unknown parameters"):
        ck.restore_optim(optim2, {"model.nope": {}}, {"model": model2})


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_load_run_on_each_device(tmp_path, device):
    """A checkpoint (always stored on CPU) loads onto every device present and scores a batch there."""
    from pact_pyro.threshold import threshold

    model, guide, _ = load_run(_write_run(tmp_path / "run"), device)
    x = torch.randn(3, 1, 28, 28, device=device)
    r = threshold(model, guide, x)
    assert r.logits.device.type == device and bool(r.logits.isfinite().all())
    if device == "cuda":
        with pytest.raises(ValueError, match="x is on device cpu but the network is on cuda"):
            threshold(model, guide, x.cpu())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast is CUDA-only")
def test_amp_step_is_finite_on_cuda():
    from pact_pyro.objective import MAPObjective

    model, guide = build(TrainConfig(depth=14, device="cuda"))
    model.cuda()
    guide.cuda()
    x, y = torch.randn(8, 1, 28, 28, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = MAPObjective()(model.model, guide, x, y)
    loss.backward()
    assert bool(loss.isfinite()) and all(bool(p.grad.isfinite().all()) for p in model.parameters())
