"""Streaming early exit (pact_pyro.stream.threshold_stream): per example the decisions, unit counts, FLOPs
and logits of the masked full forward, whatever the batch size and however the input arrives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pact_pyro.flops import FlopTable
from pact_pyro.stream import threshold_stream
from pact_pyro.threshold import evaluate_masked, threshold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_threshold import SIZE, _net  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("batch_size", [1, 4, 7, 40])
@pytest.mark.parametrize("t", [0.3, 0.5, 0.8])
def test_stream_equals_masked_forward(seed, batch_size, t):
    model, guide = _net(seed=seed)
    x = torch.randn(
        37, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(400 + seed), dtype=torch.float64
    )
    res = threshold_stream(model, guide, x, batch_size, threshold=t)
    logits, units = evaluate_masked(model, guide, x, threshold=t)
    assert torch.equal(res.units, units)  # N_b = min{l : h^l >= t} per example and block
    torch.testing.assert_close(res.logits, logits, rtol=0, atol=1e-10)
    assert torch.equal(res.flops, FlopTable.for_model(model, x.shape[1:], guide).flops(units))
    assert len(units[:, 1].unique()) > 1  # the examples halt at mixed units: rows really move between queues


def test_stream_with_more_than_64_rows_per_call_swaps_rows_in_place():
    """Above 64 rows a unit call separates halted rows by in-place swaps instead of a sort and a gather."""
    model, guide = _net(seed=4)
    x = torch.randn(150, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    res = threshold_stream(model, guide, x, 80)
    logits, units = evaluate_masked(model, guide, x)
    assert torch.equal(res.units, units)
    torch.testing.assert_close(res.logits, logits, rtol=0, atol=1e-10)


def test_stream_takes_an_iterable_of_uneven_batches_and_restores_training_flags():
    model, guide = _net(seed=2)
    x = torch.randn(20, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref = threshold(model, guide, x)
    model.train()
    res = threshold_stream(model, guide, iter([x[:3], x[3:4], x[4:20]]), batch_size=6)
    assert model.training and model.backbone.blocks[0][0].bn1.training  # flags restored
    assert torch.equal(res.units, ref.units)
    torch.testing.assert_close(res.logits, ref.logits, rtol=0, atol=1e-10)


def test_stream_of_an_act_model_is_its_batchwise_evaluation():
    from pact_pyro.guides import EmptyGuide
    from pact_pyro.models import act_resnet

    torch.manual_seed(0)
    model = act_resnet(14, tau=0.01)
    model.eval()
    x = torch.randn(10, 3, SIZE, SIZE)
    res = threshold_stream(model, EmptyGuide(model), x, batch_size=4)
    refs = [threshold(model, EmptyGuide(model), xb) for xb in x.split(4)]
    assert torch.equal(res.units, torch.cat([r.units for r in refs]))
    torch.testing.assert_close(res.logits, torch.cat([r.logits for r in refs]))


def test_stream_bad_inputs():
    model, guide = _net(seed=0)
    x = torch.randn(4, 3, SIZE, SIZE, dtype=torch.float64)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        threshold_stream(model, guide, x, 0)
    with pytest.raises(ValueError, match="threshold must be in"):
        threshold_stream(model, guide, x, 2, threshold=1.5)
    with pytest.raises(ValueError, match="at least one image"):
        threshold_stream(model, guide, iter([]), 2)
    with pytest.raises(ValueError, match=r"inputs must all have shape \[B, \*\(3, 16, 16\)\]"):
        threshold_stream(model, guide, iter([x, torch.randn(2, 3, 8, 8, dtype=torch.float64)]), 2)
