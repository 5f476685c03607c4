"""PACT-LSTM, its guide, thresholding and the ACT-LSTM baseline on tiny networks (exact oracles)."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pact_pyro.guides import EmptyGuide
from pact_pyro.guides.lstm_guide import LSTMRelaxedBernoulliGuide, LSTMStraightThroughGuide, get_lstm_guide
from pact_pyro.models.act_lstm import act_lstm, act_lstm_evaluate
from pact_pyro.models.pact_lstm import pact_lstm
from pyro import poutine

from pact_pyro.flops import count_flops
from pact_pyro.halting import units_to_z
from pact_pyro.nn.lstm import ponder_masked, ponder_threshold
from pact_pyro.objective import MAPObjective, model_trace
from pact_pyro.priors import TruncatedGeometric
from pact_pyro.sites import parse_halting_site, ponder_halting_site

B, T, I, H, O, M = 6, 3, 5, 8, 3, 4


def _data(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, I, generator=g, dtype=dtype)
    y = torch.randint(0, O, (B,), generator=g)
    return x, y


def _spread_head(linear: torch.nn.Linear, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 2.0)
        linear.bias.zero_()


def test_sites_and_shapes():
    model = pact_lstm(I, H, O, max_ponder=M, prior=TruncatedGeometric(0.1))
    guide = LSTMRelaxedBernoulliGuide(model)
    x, y = _data()
    tr = model_trace(model.model, guide, x, y)
    names = [n for n, s in tr.nodes.items() if s["type"] == "sample"]
    expected = []
    for t in range(T):
        expected += [f"ponder_s_{t}", f"ponder_z_{t}", f"ponder_units_{t}"]
    assert names == expected + ["y"]
    for t in range(T):
        assert tr.nodes[f"ponder_s_{t}"]["value"].shape == (B, M - 1, 2 * H)
        assert tr.nodes[f"ponder_z_{t}"]["value"].shape == (B, M - 1)
        assert tr.nodes[f"ponder_units_{t}"]["value"].shape == (B,)
        assert parse_halting_site(f"ponder_z_{t}") is None  # never read as a ResNet block
    assert tr.nodes["y"]["fn"].logits.shape == (B, O)
    # a plain LSTM (M = 1) has no halting sites
    plain = pact_lstm(I, H, O, max_ponder=1)
    tr = model_trace(plain.model, EmptyGuide(plain), x, y)
    assert [n for n, s in tr.nodes.items() if s["type"] == "sample"] == ["y"]


def test_bad_inputs_name_the_argument():
    model = pact_lstm(I, H, O, max_ponder=M)
    with pytest.raises(ValueError, match="x must be a"):
        model.model(torch.zeros(B, I))
    with pytest.raises(ValueError, match="y must lie"):
        model.model(torch.zeros(B, T, I), torch.full((B,), O))
    with pytest.raises(ValueError, match="max_ponder"):
        pact_lstm(I, H, O, max_ponder=0)
    with pytest.raises(ValueError, match="guide must be"):
        get_lstm_guide("nope", model)


def _manual(net, x, n):
    """Reference: example i applies the cell n[i, t] times at step t and carries s^{N_t}."""
    outs = []
    for i in range(x.shape[0]):
        h, c = torch.zeros(1, H, dtype=x.dtype), torch.zeros(1, H, dtype=x.dtype)
        for t in range(x.shape[1]):
            for k in range(int(n[i, t])):
                h, c = net.step(x[i : i + 1, t], (h, c), k == 0)
        outs.append(net.readout(h))
    return torch.cat(outs).log_softmax(-1)  # Categorical stores normalised logits


def test_relaxed_mixture_is_exact_state_at_binary_z():
    torch.set_default_dtype(torch.float64)
    try:
        model = pact_lstm(I, H, O, max_ponder=M)
        x, y = _data(torch.float64)
        n = torch.randint(1, M + 1, (B, T), generator=torch.Generator().manual_seed(3))
        data = {ponder_halting_site(t): units_to_z(n[:, t], M, dtype=torch.float64) for t in range(T)}
        tr = poutine.trace(poutine.condition(model.model, data=data)).get_trace(x, y)
        got = tr.nodes["y"]["fn"].logits
        for t in range(T):
            assert torch.equal(tr.nodes[f"ponder_units_{t}"]["value"], n[:, t].double())
        torch.testing.assert_close(got, _manual(model.net, x, n), rtol=0, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def test_threshold_equals_masked_sequential_computation():
    model = pact_lstm(I, H, O, max_ponder=M)
    guide = LSTMRelaxedBernoulliGuide(model)
    _spread_head(guide.head.linear)
    x = torch.randn(64, T, I, generator=torch.Generator().manual_seed(5))
    lg, n = ponder_threshold(model.net, x, guide.ponder_logits)
    lg_ref, n_ref = ponder_masked(model.net, x, guide.ponder_logits)
    assert torch.equal(n, n_ref)
    assert len(torch.unique(n)) >= 3  # the check exercises different ponder counts
    torch.testing.assert_close(lg, lg_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(lg[:, -1].log_softmax(-1), _manual(model.net, x, n), rtol=0, atol=1e-5)
    # threshold 1 (h < 1 everywhere) runs every step
    _, n_full = ponder_threshold(model.net, x, guide.ponder_logits, threshold=1.0)
    assert bool((n_full == M).all())


def test_flops_of_one_cell_application():
    model = pact_lstm(I, H, O, max_ponder=M)
    guide = LSTMRelaxedBernoulliGuide(model)
    costs = model.net.flops(guide.head)
    x = torch.zeros(1, I)
    s = (torch.zeros(1, H), torch.zeros(1, H))
    assert costs["cell"] == count_flops(lambda: model.net.step(x, s, True)) == 2 * 4 * H * (I + 1 + H)
    assert costs["head"] == count_flops(guide.head, torch.zeros(1, 2 * H)) == 4 * H
    assert costs["readout"] == count_flops(model.net.readout, torch.zeros(1, H))


@pytest.mark.parametrize("guide_cls", [LSTMRelaxedBernoulliGuide, LSTMStraightThroughGuide])
def test_gradients_reach_the_halting_head(guide_cls):
    model = pact_lstm(I, H, O, max_ponder=M, prior=TruncatedGeometric(0.5))
    guide = guide_cls(model, temperature=0.5)
    x, y = _data()
    loss = MAPObjective().differentiable_loss(model.model, guide, x, y)
    loss.backward()
    g = guide.head.linear.weight.grad
    assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0
    assert float(model.net.cell.weight_hh.grad.abs().sum()) > 0
    # SVI sees the head's parameters through pyro.module
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=MAPObjective())
    before = guide.head.linear.bias.detach().clone()
    svi.step(x, y)
    assert not torch.equal(before, guide.head.linear.bias.detach())


def _const_act(M_, p):
    model = act_lstm(I, H, O, max_ponder=M_, tau=0.1)
    with torch.no_grad():
        model.head.linear.weight.zero_()
        model.head.linear.bias.fill_(math.log(p / (1 - p)))
    return model


@pytest.mark.parametrize(
    "M_, p, n, rho",
    [
        (6, 0.3, 4, 4.1),  # S = .3 .6 .9 1.2 ≥ .99 at n = 4; R = 1 - .9
        (3, 0.3, 3, 3.4),  # M reached first: N = 3, R = 1 - .6
        (5, 1 - 1e-6, 1, 2.0),  # h ≈ 1 halts at once: R = 1
        (4, 0.5, 2, 2.5),  # S_2 = 1 ≥ .99: N = 2, R = 1 - .5
    ],
)
def test_act_lstm_hand_cases(M_, p, n, rho):
    model = _const_act(M_, p)
    x, y = _data()
    tr = model_trace(model.model, EmptyGuide(model), x, y)
    for t in range(T):
        torch.testing.assert_close(
            tr.nodes[f"ponder_units_{t}"]["value"], torch.full((B,), rho), atol=1e-5, rtol=0
        )
    tr.compute_log_prob()  # the factor is -τ Σ_t ρ_t per example
    torch.testing.assert_close(
        tr.nodes["act_cost"]["log_prob"], torch.full((B,), -0.1 * T * rho), atol=1e-5, rtol=0
    )
    lg, units = act_lstm_evaluate(model, x)
    assert bool((units == n).all())
    torch.testing.assert_close(lg[:, -1].log_softmax(-1), tr.nodes["y"]["fn"].logits, atol=1e-5, rtol=0)


def test_act_lstm_early_exit_matches_training_forward():
    model = act_lstm(I, H, O, max_ponder=M, tau=0.01)
    _spread_head(model.head.linear, seed=2)
    with torch.no_grad():
        model.head.linear.bias.fill_(0.5)
    x = torch.randn(64, T, I, generator=torch.Generator().manual_seed(7))
    tr = model_trace(model.model, EmptyGuide(model), x, None)
    lg, units = act_lstm_evaluate(model, x)
    assert len(torch.unique(units)) >= 2
    torch.testing.assert_close(lg[:, -1].log_softmax(-1), tr.nodes["y"]["fn"].logits, atol=1e-5, rtol=0)
    rho = torch.stack([tr.nodes[f"ponder_units_{t}"]["value"] for t in range(T)], -1)
    assert torch.equal(units, torch.ceil(rho - 1e-4).long() - 1)  # ρ = N + R with R ∈ (0, 1]


def test_parity_example_and_cli_smoke(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    from pact_pyro.cli import main as cli_main

    path = Path(__file__).resolve().parents[1] / "examples" / "parity_lstm.py"
    spec = importlib.util.spec_from_file_location("parity_lstm", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    summary = ex.main(
        ex.build_parser().parse_args(["--smoke", "--runs", str(tmp_path / "ex"), "--methods", "pact"])
    )
    assert set(summary) == {"pact"} and (tmp_path / "ex" / "pact" / "predictions.csv").is_file()
    out = tmp_path / "cli"
    flags = ["--task", "parity", "--arch", "lstm", "--bits", "4", "--max-ponder", "3", "--hidden-size", "8"]
    flags += ["--steps", "2", "--batch-size", "8", "--test-subset", "16", "--tau", "0.2", "--no-progress"]
    assert cli_main(["train", *flags, "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["task"], cfg["bits"], cfg["tau"], cfg["lr"]) == ("parity", 4, 0.2, 1e-3)  # lr: the preset's
    capsys.readouterr()
    assert cli_main(["evaluate", str(out), "--predictions", str(tmp_path / "p.csv")]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "flops_mean", "flops_std", "flops_full", "units_mean", "examples", "mode"):
        assert key in res
    assert (tmp_path / "p.csv").read_text().splitlines()[0].endswith(",flops,difficulty")


SEQ_ARGS = [
    "train", "--task", "parity", "--arch", "lstm", "--bits", "6", "--max-ponder", "4", "--hidden-size", "16",
    "--steps", "60", "--batch-size", "16", "--tau", "0.05", "--tau-start-accuracy", "0.3",
    "--tau-ramp-steps", "20", "--checkpoint-every", "10", "--no-eval", "--no-progress",
]  # fmt: skip


def test_sequence_run_sigkill_then_resume_is_bit_identical(tmp_path):
    """Sequence runs go through the one trainer: SIGKILL after the first checkpoint, --resume, and every
    state (weights, optimizer, RNG, the τ ramp's start) equals an uninterrupted run's."""

    from pact_pyro import cli
    from pact_pyro.checkpoint import load_checkpoint
    from tests.common import assert_identical, kill_after_first_checkpoint

    full, killed = tmp_path / "full", tmp_path / "killed"
    argv = [*SEQ_ARGS, "--eval-every", "10"]
    ckpt = killed / "checkpoint.pt"
    kill_after_first_checkpoint(
        [*argv, "--out", str(killed)], ckpt, lambda: cli.main([*argv, "--out", str(full)]) == 0
    )
    assert 0 < load_checkpoint(ckpt)["step"] < 60
    assert cli.main([*argv, "--out", str(killed), "--resume"]) == 0
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(ckpt)
    assert a["step"] == b["step"] == 60 and a["task"]["ramp_start"] == 10  # the ramp began before the kill
    for key in ("model", "guide", "optim", "rng", "task"):
        assert_identical(a[key], b[key], key)
