"""FLOPs by SACT's counting rules for the three methods (issue 4's reference numbers, CIFAR-10 input)."""

from __future__ import annotations

import json

import pytest
import torch

from pact_pyro.act_evaluate import act_evaluate
from pact_pyro.cli import main
from pact_pyro.flops import FlopTable
from pact_pyro.threshold import threshold
from pact_pyro.train import TrainConfig, build

CIFAR = (3, 32, 32)
UNIT = 9_437_184  # a stride-1 unit: 2 convs 3x3, 2 FLOPs per multiply-add
RESNET32_PLAIN = 137_725_184
RESNET32_HEADS = 137_726_080  # + 2·C per headed unit: 4·(2·16 + 2·32 + 2·64) = 896
RESNET110_PLAIN = 505_775_360
RESNET32_UNIT1 = 24_479_200  # stem + unit 1 of each block + its head + classifier


def table(method: str, depth: int) -> FlopTable:
    model, guide = build(TrainConfig(dataset="cifar10", depth=depth, method=method))
    return FlopTable.for_model(model, CIFAR, guide)


@pytest.mark.parametrize(
    ("method", "depth", "full"),
    [("plain", 32, RESNET32_PLAIN), ("act", 32, RESNET32_HEADS), ("pact", 32, RESNET32_HEADS),
     ("plain", 110, RESNET110_PLAIN)],
)  # fmt: skip
def test_full_network(method, depth, full):
    t = table(method, depth)
    assert t.full == full
    assert t.units[0][1] == UNIT and t.units[1][1] == UNIT and t.units[2][1] == UNIT
    assert [sum(h) for h in t.heads] == ([0, 0, 0] if method == "plain" else [4 * 32, 4 * 64, 4 * 128])


def test_every_unit_counts_as_full():
    for method in ("plain", "act", "pact"):
        t = table(method, 32)
        assert t.flops(torch.full((2, 3), 5)).tolist() == [t.full, t.full]


def test_stop_after_unit_one_everywhere():
    t = table("act", 32)
    assert t.flops(torch.ones(1, 3, dtype=torch.int64)).item() == RESNET32_UNIT1
    assert table("pact", 32).flops(torch.ones(1, 3, dtype=torch.int64)).item() == RESNET32_UNIT1


def test_evaluation_paths_count_what_they_run():
    """Heads forced to halt at unit 1: ACT and PACT evaluation both report 24,479,200 per image."""
    x = torch.randn(3, *CIFAR)
    act, _ = build(TrainConfig(dataset="cifar10", depth=32, method="act"))
    pact, guide = build(TrainConfig(dataset="cifar10", depth=32, method="pact"))
    with torch.no_grad():
        for head in [h for b in act.heads for h in b] + [h for b in guide.heads for h in b]:
            head.linear.bias.fill_(20.0)  # h ≈ 1 ≥ 1 - ε and ≥ 0.5
            head.linear.weight.zero_()
    r = act_evaluate(act.backbone, act.heads, x)
    assert r.units.tolist() == [[1, 1, 1]] * 3 and r.flops.tolist() == [RESNET32_UNIT1] * 3
    r = threshold(pact, guide, x)
    assert r.units.tolist() == [[1, 1, 1]] * 3 and r.flops.tolist() == [RESNET32_UNIT1] * 3


@pytest.mark.parametrize(
    ("method", "depth", "full"),
    [("plain", 32, RESNET32_PLAIN), ("act", 32, RESNET32_HEADS), ("pact", 32, RESNET32_HEADS),
     ("plain", 110, RESNET110_PLAIN)],
)  # fmt: skip
def test_cli_flops(method, depth, full, capsys):
    assert main(["flops", "--dataset", "cifar10", "--depth", str(depth), "--method", method]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["flops_full"] == full and res["method"] == method


def test_cli_flops_rejects_unknown_method(capsys):
    with pytest.raises(SystemExit) as err:
        main(["flops", "--method", "skipnet"])
    assert err.value.code == 2 and "method must be one of" in capsys.readouterr().err
