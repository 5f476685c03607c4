"""Thresholding with real early exit (pact_pyro.threshold): equal to the masked full forward with the same
decisions, and only the current state ``u`` of each block is kept (no accumulator)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from pact_pyro.guides import get_guide
from pact_pyro.models import pact_resnet

from pact_pyro.flops import FlopTable
from pact_pyro.threshold import evaluate_masked, threshold

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import LiveBytes, calibrate_heads  # noqa: E402

SIZE = 16


def _randomise(model, guide, seed: int, dtype=torch.float64):
    """Random BatchNorm statistics/affines everywhere and random halting heads (random weights, biases set
    so that a random fraction halts at each head), so that eval-mode BN is not the identity and decisions
    differ between examples, units and blocks."""
    g = torch.Generator().manual_seed(seed)
    model.to(dtype)
    guide.to(dtype)
    for m in [*model.modules(), *guide.modules()]:
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(c, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(c, generator=g))
    for block in guide.heads:
        for head in block:
            head.linear.weight.data.copy_(2.0 * torch.randn(head.linear.weight.shape, generator=g))
    model.eval()
    guide.eval()
    # biases: at each head a random fraction (25-60%) of the examples still running halt
    hazard = float(torch.empty(()).uniform_(0.25, 0.6, generator=g))
    calibrate_heads(model, guide, torch.randn(64, 3, SIZE, SIZE, generator=g, dtype=dtype), hazard)


def _net(depth: int = 20, seed: int = 0):
    model = pact_resnet(depth)
    guide = get_guide("relaxed", model)
    _randomise(model, guide, seed)
    return model, guide


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch", [1, 5, 24])
@pytest.mark.parametrize("mode", ["threshold", "sample"])
def test_early_exit_equals_masked_forward(seed, batch, mode):
    model, guide = _net(seed=seed)
    x = torch.randn(
        batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64
    )
    gen = torch.Generator().manual_seed(7) if mode == "sample" else None
    res = threshold(model, guide, x, mode=mode, generator=gen)
    logits, units = evaluate_masked(model, guide, x, units=res.units)
    assert torch.equal(units, res.units)
    torch.testing.assert_close(res.logits, logits, rtol=0, atol=1e-6)
    assert ((res.units >= 1) & (res.units <= torch.tensor(model.units_per_block))).all()
    if mode == "threshold":  # the decisions themselves follow N = min{l : h^l >= 0.5}
        assert torch.equal(evaluate_masked(model, guide, x)[1], res.units)
    else:  # a fixed generator reproduces the sample
        again = threshold(model, guide, x, mode=mode, generator=torch.Generator().manual_seed(7))
        assert torch.equal(again.units, res.units)
        torch.testing.assert_close(again.logits, res.logits, rtol=0, atol=0)
    table = FlopTable.for_model(model, x.shape[1:], guide)
    assert torch.equal(res.flops, table.flops(res.units))


def test_random_heads_give_mixed_decisions():
    """The settings above exercise compaction: examples stop at different units within a batch."""
    model, guide = _net(seed=0)
    x = torch.randn(24, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(100), dtype=torch.float64)
    units = threshold(model, guide, x).units
    assert all(len(units[:, b].unique()) > 1 for b in range(units.shape[1]))


def test_threshold_one_runs_every_unit_and_matches_backbone():
    model, guide = _net(seed=3)
    x = torch.randn(6, 3, SIZE, SIZE, dtype=torch.float64)
    res = threshold(model, guide, x, threshold=1.0)
    assert (res.units == torch.tensor(model.units_per_block)).all()
    with torch.no_grad():
        torch.testing.assert_close(res.logits, model.backbone(x), rtol=0, atol=1e-10)


def test_training_flags_restored():
    model, guide = _net(seed=0)
    x = torch.randn(3, 3, SIZE, SIZE, dtype=torch.float64)
    model.train()
    guide.train()
    a = threshold(model, guide, x)
    assert model.backbone.training and guide.training
    assert all(m.training for m in model.backbone.modules())
    model.eval()
    guide.eval()
    b = threshold(model, guide, x)
    assert not any(m.training for m in [*model.backbone.modules(), *guide.modules()])
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)  # BN used running statistics both times


def test_live_bytes_tracker_counts_storages():
    with LiveBytes() as lb:
        a = torch.empty(1024, dtype=torch.float32)  # 4 KiB
        v = a.view(32, 32)  # a view: no new storage
        c = v + 1  # 4 KiB more
        del c
        assert lb.live == 4096
    assert lb.peak == 8192


def _unit_starts(net):
    """A module that starts every unit's computation (``bn1``): evaluations may call ``unit.residual``
    directly, so the unit's own hooks do not fire there."""
    return [u.bn1 for block in net.blocks for u in block]


def _peak_and_kept(fn, units):
    """Peak live bytes of ``fn()`` and the largest live bytes at the start of any unit (kept in between)."""
    kept = [0]
    with torch.no_grad(), LiveBytes() as lb:
        hooks = [
            m.register_forward_pre_hook(lambda *_: kept.__setitem__(0, max(kept[0], lb.live))) for m in units
        ]
        try:
            fn()
        finally:
            for h in hooks:
                h.remove()
    return lb.peak, kept[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_threshold_keeps_only_the_current_state(seed):
    """Between units only one state ``u`` is live (the block-1 state is the largest), and the peak equals the
    plain full forward's; a routine that keeps per-unit states (``evaluate_masked``) fails the same check."""
    model, guide = _net(seed=seed)
    net = model.backbone
    B = 32
    x = torch.randn(B, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    state = B * net.widths[0] * SIZE * SIZE * 8  # bytes of one block-1 state [B, 16, 16, 16], float64
    slack = 64 * 1024  # decisions, index vectors, head outputs: O(B) bytes
    all_units = _unit_starts(net)
    units = threshold(model, guide, x).units
    assert len(units[:, 0].unique()) > 1  # mixed decisions: compaction happened

    full_peak, full_kept = _peak_and_kept(lambda: net(x), all_units)
    peak, kept = _peak_and_kept(lambda: threshold(model, guide, x), all_units)
    assert full_kept <= state + slack
    assert kept <= state + slack  # no accumulator next to the state
    assert peak <= full_peak + slack

    masked_peak, masked_kept = _peak_and_kept(lambda: evaluate_masked(model, guide, x), all_units)
    assert masked_kept > 2 * state  # the check does detect kept per-unit states
    assert masked_peak > full_peak + state
    # a unit needs its input and two transients (activation, convolution output): 3 states, downsampling
    # units included (their shortcut is computed after the residual) and no accumulator; ACT needs one more
    assert peak <= 3 * state + slack
    from pact_pyro.act_evaluate import act_evaluate

    act_peak, act_kept = _peak_and_kept(lambda: act_evaluate(net, guide.heads, x), all_units)
    assert act_kept >= 2 * state - slack  # state and accumulator between units
    assert act_peak >= 4 * state - slack


def test_folded_heads_equal_the_guide_heads_and_follow_updates():
    """threshold() folds each stock head (eval BN1d then Linear) into one addmv; it must equal
    guide.halting_logits, and be refolded when a head's tensors change (training continues, state loaded)."""
    from pact_pyro.threshold import _head_logits

    model, guide = _net(seed=1)
    u = torch.randn(7, 16, SIZE, SIZE, dtype=torch.float64)
    with torch.no_grad():
        for b, w in enumerate(model.backbone.widths):
            ub = torch.randn(7, w, SIZE >> b, SIZE >> b, dtype=torch.float64)
            for l in range(len(guide.heads[b])):
                torch.testing.assert_close(_head_logits(guide)(b, l, ub), guide.halting_logits(b, l, ub))
        guide.heads[0][0].bn.running_mean.add_(0.5)  # in place: the version counter changes
        guide.heads[0][0].linear.bias.sub_(1.0)
        torch.testing.assert_close(_head_logits(guide)(0, 0, u), guide.halting_logits(0, 0, u))

    class Shifted(type(guide)):
        def halting_logits(self, block, unit, u):
            return super().halting_logits(block, unit, u) + 100.0

    guide.__class__ = Shifted  # an overridden halting_logits is always used as is
    x = torch.randn(4, 3, SIZE, SIZE, dtype=torch.float64)
    assert (threshold(model, guide, x).units == 1).all()


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_batch_one_path_equals_the_batched_path(thr):
    """Batch 1 takes a scalar fast path; example by example it must give the batched decisions, logits and
    FLOPs (the threshold is compared in the network's dtype on both paths)."""
    model, guide = _net(seed=4)
    x = torch.randn(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    batched = threshold(model, guide, x, threshold=thr)
    single = [threshold(model, guide, x[i : i + 1], threshold=thr) for i in range(len(x))]
    assert torch.equal(torch.cat([r.units for r in single]), batched.units)
    assert torch.equal(torch.cat([r.flops for r in single]), batched.flops)
    torch.testing.assert_close(torch.cat([r.logits for r in single]), batched.logits, rtol=0, atol=1e-9)
    assert len(batched.units.unique(dim=0)) > 1  # the examples really take different paths


def test_a_submodule_swapped_in_training_mode_is_still_evaluated_in_eval_mode():
    """The training-flag check caches the module list; replacing a deep submodule must invalidate it."""
    model, guide = _net(seed=0)
    x = torch.randn(4, 3, SIZE, SIZE, dtype=torch.float64)
    threshold(model, guide, x)  # fills the cache while everything is in eval mode
    unit = model.backbone.blocks[1][1]
    fresh = torch.nn.BatchNorm2d(unit.bn1.num_features, eps=unit.bn1.eps).double()  # training mode
    unit.bn1 = fresh
    res = threshold(model, guide, x)
    assert fresh.training and int(fresh.num_batches_tracked) == 0  # restored, and never used batch stats
    fresh.eval()
    torch.testing.assert_close(res.logits, threshold(model, guide, x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("chunk_size", [1, 5, 24, 100])
def test_chunked_evaluation_equals_the_whole_batch(seed, chunk_size):
    """``chunk_size`` changes how many examples a unit call sees, not the result (PACT and ACT)."""
    from pact_pyro.act_evaluate import act_evaluate

    model, guide = _net(seed=seed)
    gen = torch.Generator().manual_seed(200 + seed)
    x = torch.randn(24, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)
    ref = threshold(model, guide, x)
    res = threshold(model, guide, x, chunk_size=chunk_size)
    assert torch.equal(res.units, ref.units) and torch.equal(res.flops, ref.flops)
    torch.testing.assert_close(res.logits, ref.logits, rtol=0, atol=1e-10)
    assert torch.equal(evaluate_masked(model, guide, x)[1], res.units)
    act_ref = act_evaluate(model.backbone, guide.heads, x)
    act = act_evaluate(model.backbone, guide.heads, x, chunk_size=chunk_size)
    assert torch.equal(act.units, act_ref.units)
    torch.testing.assert_close(act.logits, act_ref.logits, rtol=0, atol=1e-10)
    assert len(act_ref.units[:, 0].unique()) > 1  # ACT halts at mixed units too


@pytest.mark.parametrize("chunk_size", [None, 1, 5])
@pytest.mark.parametrize("batch", [1, 3, 24])
def test_channels_last_input_gives_the_same_evaluation(chunk_size, batch):
    """A channels-last (NHWC) input runs every unit in that layout, chunked or not (a stride-2 unit's output
    then reuses its input's NHWC storage): the same decisions and logits as NCHW (float64, 1e-10)."""
    model, guide = _net(seed=3)
    gen = torch.Generator().manual_seed(300)
    x = torch.randn(batch, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)
    ref = threshold(model, guide, x)
    res = threshold(model, guide, x.contiguous(memory_format=torch.channels_last), chunk_size=chunk_size)
    assert torch.equal(res.units, ref.units) and torch.equal(res.flops, ref.flops)
    torch.testing.assert_close(res.logits, ref.logits, rtol=0, atol=1e-10)
    masked, units = evaluate_masked(model, guide, x)
    assert torch.equal(units, res.units)
    torch.testing.assert_close(res.logits, masked, rtol=0, atol=1e-10)


def test_chunked_thresholding_needs_about_one_state_and_act_two():
    """With ``chunk_size = c`` a PACT evaluation peaks at one block-1 state plus the transients of ``c``
    examples (the stride-2 units write into the front of their input's storage); ACT, with the same
    machinery, keeps its accumulator on top: at c = B/8 the PACT/ACT peak ratio is below 0.6."""
    from pact_pyro.act_evaluate import act_evaluate

    model, guide = _net(seed=0)
    net = model.backbone
    B, c = 32, 4
    x = torch.randn(B, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    state = B * net.widths[0] * SIZE * SIZE * 8
    slack = 64 * 1024
    threshold(model, guide, x)  # builds the folded heads' cached weights (one state row per head) first
    peak, kept = _peak_and_kept(lambda: threshold(model, guide, x, chunk_size=c), _unit_starts(net))
    assert kept <= state + slack
    assert peak <= state * (1 + 2 * c / B) + slack  # a unit's two transients, for c examples
    act_peak, act_kept = _peak_and_kept(
        lambda: act_evaluate(net, guide.heads, x, chunk_size=c), _unit_starts(net)
    )
    assert act_kept >= 2 * state - slack
    assert act_peak >= 2 * state
    assert peak / act_peak <= 0.6
    with pytest.raises(ValueError, match="chunk_size must be None or an int >= 1"):
        threshold(model, guide, x, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        act_evaluate(net, guide.heads, x, chunk_size=2.5)


def test_decision_is_taken_on_the_logit_scale():
    """``h ≥ t`` is decided as ``logit h ≥ logit(t)``: exact where float32's sigmoid rounds (σ(-1e-9) is
    0.5 in float32, but the example has h < 0.5), and t = 1 never halts, however saturated the head."""
    from pact_pyro.threshold import _decide, _logit_threshold

    logits = torch.tensor([-1e-9, 0.0, 1e-9, 30.0])
    assert torch.sigmoid(logits)[0] == 0.5  # what a sigmoid-based rule would have seen
    assert _decide(logits, 0.5, "threshold", None).tolist() == [False, True, True, True]
    assert not _decide(logits, 1.0, "threshold", None).any()
    lt = _logit_threshold(0.7, torch.float32)
    assert lt == pytest.approx(0.8472978603872037, rel=1e-7)
    below, at = torch.tensor([lt]).nextafter(torch.tensor([-1.0])), torch.tensor([lt])
    assert not _decide(below, 0.7, "threshold", None) and _decide(at, 0.7, "threshold", None)
