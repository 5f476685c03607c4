"""Training options: cosine schedule, halting-head learning rate, several relaxed samples, channels-last."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pact_pyro.checkpoint import load_checkpoint
from pact_pyro.train import TrainConfig, cosine_lambda, is_halting_param, train

BASE = dict(dataset="mnist", depth=14, train_subset=48, batch_size=16, device="cpu", log_every=1)


def test_cosine_lambda_exact():
    f = cosine_lambda(10, 0.2)  # 2 warm-up steps, then cosine over 8
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == 1.0 and f(10) == 0.0
    assert math.isclose(f(6), 0.5 * (1 + math.cos(math.pi * 4 / 8)), rel_tol=1e-12)
    g = cosine_lambda(4, 0.0)
    assert [g(s) for s in range(5)] == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0]
    )


@pytest.mark.parametrize("method", ["pact", "act"])
def test_head_lr_multiplier_reaches_only_the_heads(tiny_root, tmp_path, one_thread, method):
    import pyro

    from pact_pyro import train as T

    seen = {}
    real = T._make_optim

    def spy(cfg, total):
        optim = real(cfg, total)
        seen["optim"] = optim
        return optim

    cfg = TrainConfig(**BASE, method=method, optimizer="sgd", schedule="cosine", lr=0.05, head_lr_mult=10.0,
                      epochs=1.0, data_root=str(tiny_root))  # fmt: skip
    T._make_optim = spy
    try:
        train(cfg, tmp_path / "run", progress=False)
    finally:
        T._make_optim = real
    store = pyro.get_param_store()
    base_lrs = {store.param_name(p): s.optimizer.param_groups[0]["initial_lr"]
                for p, s in seen["optim"].optim_objs.items()}  # fmt: skip
    heads = {k: v for k, v in base_lrs.items() if is_halting_param(k.replace("$$$", "."))}
    rest = {k: v for k, v in base_lrs.items() if k not in heads}
    assert heads and rest
    assert set(heads.values()) == {0.5} and set(rest.values()) == {0.05}


def test_head_lr_multiplier_needs_the_cosine_schedule():
    with pytest.raises(ValueError, match="head_lr_mult must be 1.0 unless schedule='cosine', got 3.0"):
        TrainConfig(head_lr_mult=3.0).validate()


def test_particles_duplicate_the_batch_exactly(tiny_root, tmp_path, one_thread):
    """A deterministic network (plain ResNet) sees the same loss and takes the same step with K copies of the
    batch: the K-sample objective is the mean over copies, BatchNorm statistics are unchanged."""
    runs = {}
    for k in (1, 3):
        cfg = TrainConfig(**BASE, method="plain", optimizer="sgd", lr=0.05, epochs=1.0, particles=k,
                          data_root=str(tiny_root))  # fmt: skip
        runs[k] = train(cfg, tmp_path / f"k{k}", progress=False)
    la = [json.loads(line)["loss"] for line in (runs[1] / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line)["loss"] for line in (runs[3] / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)
    a, b = (
        load_checkpoint(runs[1] / "checkpoint.pt")["model"],
        load_checkpoint(runs[3] / "checkpoint.pt")["model"],
    )
    for key in a:  # running_var keeps BN's unbiased n/(n-1) factor, n = 3x larger with 3 copies
        tol = dict(rtol=2e-3, atol=1e-6) if key.endswith("running_var") else dict(rtol=1e-4, atol=1e-6)
        assert torch.allclose(a[key].double(), b[key].double(), **tol), key
    with pytest.raises(ValueError, match="particles must be an integer >= 1, got 0"):
        TrainConfig(particles=0).validate()


def test_channels_last_trains_the_same_weights(tiny_root, tmp_path, one_thread):
    """NHWC inputs only change float rounding; in particular every conv weight is trained (Pyro's param
    store keeps contiguous copies, so NHWC *parameters* would silently train copies)."""
    out = {}
    for cl in (False, True):
        cfg = TrainConfig(**BASE, method="pact", optimizer="sgd", schedule="cosine", lr=0.05, epochs=2.0,
                          channels_last=cl, data_root=str(tiny_root))  # fmt: skip
        out[cl] = load_checkpoint(train(cfg, tmp_path / f"cl{cl}", progress=False) / "checkpoint.pt")["model"]
    for key, v in out[False].items():
        assert torch.allclose(v.double(), out[True][key].double(), rtol=1e-3, atol=1e-4), key


@pytest.mark.parametrize("method", ["pact", "act"])
def test_cosine_schedule_with_head_lr_resumes_bit_identically(
    tiny_root, tmp_path, one_thread, monkeypatch, method
):
    """Per-parameter learning rates (a callable ``optim_args``) survive a crash: the resumed run rebuilds each
    parameter's optimizer with its own LR and ends with the uninterrupted run's weights."""

    from tests.common import assert_identical, crash_at_step

    cfg = dict(**BASE, method=method, optimizer="sgd", schedule="cosine", lr=0.05, head_lr_mult=10.0,
               epochs=2.0, checkpoint_every=2, data_root=str(tiny_root))  # fmt: skip
    train(TrainConfig(**cfg), tmp_path / "full", progress=False)
    crash_at_step(monkeypatch, 4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(TrainConfig(**cfg), tmp_path / "crashed", progress=False)
    monkeypatch.undo()
    train(TrainConfig(**cfg), tmp_path / "crashed", progress=False, resume=True)
    a, b = (
        load_checkpoint(tmp_path / "full" / "checkpoint.pt"),
        load_checkpoint(tmp_path / "crashed" / "checkpoint.pt"),
    )
    for key in ("model", "guide", "optim"):
        assert_identical(a[key], b[key], key)
