"""PACT/ACT/plain on torchvision ResNets: torchvision's logits with every unit, strict loading, FLOPs."""

from __future__ import annotations

import pyro
import pytest
import torch
import torchvision
from pact_pyro.guides import RelaxedBernoulliGuide
from pact_pyro.models import act_torchvision_resnet, pact_torchvision_resnet, plain_torchvision_resnet

from pact_pyro import MAPObjective, TruncatedGeometric, threshold
from pact_pyro.flops import FlopTable
from pact_pyro.threshold import evaluate_masked
from tests.common import randomize_heads

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def _tv(arch: str, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None, num_classes=classes)
    with torch.no_grad():  # non-trivial BN statistics, so that eval mode differs from train mode
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_every_unit_gives_torchvision_logits(arch, tmp_path):
    tv = _tv(arch)
    path = tmp_path / f"{arch}.pt"
    torch.save(tv.state_dict(), path)  # a locally saved checkpoint: no download
    model = pact_torchvision_resnet(arch, weights=path, prior=TruncatedGeometric(0.01))
    guide = RelaxedBernoulliGuide(model)
    model.eval()
    guide.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = tv(x)
        got = threshold(model, guide, x, threshold=1.0)
    assert got.units.tolist() == [model.units_per_block] * 2
    assert (got.logits - want).abs().max() <= 1e-5
    assert list(model.backbone.state_dict()) == list(tv.state_dict())  # torchvision's keys, in order
    if arch in ("resnet18", "resnet50"):  # Basic and Bottleneck units; building the larger ones is slow
        with torch.no_grad():
            assert (
                plain_torchvision_resnet(arch, weights=path).eval().backbone(x) - want
            ).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_early_exit_equals_masked_evaluation(arch):
    model = pact_torchvision_resnet(arch, weights=_tv(arch).state_dict())
    guide = RelaxedBernoulliGuide(model)
    randomize_heads(guide, std=3.0)
    model.eval()
    guide.eval()
    x = torch.randn(9, 3, 48, 48)
    with torch.no_grad():
        fast = threshold(model, guide, x)
        chunked = threshold(model, guide, x, chunk_size=4)
        logits, units = evaluate_masked(model, guide, x)
    assert len({tuple(u) for u in fast.units.tolist()}) > 1, "heads should stop at different units"
    assert torch.equal(fast.units, units) and torch.equal(chunked.units, units)
    assert (fast.logits - logits).abs().max() <= 1e-5 and (chunked.logits - logits).abs().max() <= 1e-5


def test_training_steps_pact_and_act():
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    model = pact_torchvision_resnet("resnet18", num_classes=10, prior=TruncatedGeometric(0.05))
    guide = RelaxedBernoulliGuide(model)
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.SGD({"lr": 0.01}), loss=MAPObjective())
    assert torch.isfinite(torch.tensor(svi.step(x, y)))
    loss = MAPObjective().differentiable_loss(model.model, guide, x, y)
    loss.backward()
    assert all(h.linear.weight.grad is not None and h.linear.weight.grad.abs().sum() > 0
               for b in guide.heads for h in b)  # fmt: skip
    act = act_torchvision_resnet("resnet18", num_classes=10, tau=0.05)
    pyro.clear_param_store()
    loss = MAPObjective().differentiable_loss(act.model, lambda *a: None, x, y)
    assert torch.isfinite(loss)


def test_strict_loading_and_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"arch must be one of \['resnet18'.*got 'resnet19'"):
        pact_torchvision_resnet("resnet19")
    r18 = tmp_path / "r18.pt"
    torch.save(_tv("resnet18").state_dict(), r18)
    with pytest.raises(ValueError) as err:
        pact_torchvision_resnet("resnet50", weights=r18)
    msg = str(err.value)
    assert "\n" not in msg and f"init_from={str(r18)!r}" in msg and "'conv1.weight'" not in msg
    assert "'layer1.0.conv1.weight' has shape (64, 64, 3, 3) in the source and (64, 64, 1, 1)" in msg, msg
    with pytest.raises(FileNotFoundError, match="weights=.*does not exist"):
        pact_torchvision_resnet("resnet18", weights=tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="weights must be None, a torchvision.models"):
        pact_torchvision_resnet("resnet18", weights=3)
    # a new label set: everything but fc loads, fc is fresh
    model = pact_torchvision_resnet("resnet18", weights=r18, num_classes=5)
    src = torch.load(r18, weights_only=True)
    got = model.backbone.state_dict()
    assert got["fc.weight"].shape == (5, 512)
    assert all(torch.equal(got[k], v) for k, v in src.items() if not k.startswith("fc."))


def _analytic_flops(net: torch.nn.Module, size: int) -> int:
    """2 × multiply-adds of every Conv2d and Linear, from their shapes (forward hooks; SACT's rules)."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total += 2 * k * out.shape[1] * out.shape[2] * out.shape[3]
        else:
            total += 2 * m.in_features * m.out_features

    hs = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    for h in hs:
        h.remove()
    return total


@pytest.mark.parametrize(("arch", "units"), [("resnet50", [3, 4, 6, 3]), ("resnet101", [3, 4, 23, 3])])
def test_flops_at_224_follow_sact_rules(arch, units):
    model = plain_torchvision_resnet(arch).eval()
    table = FlopTable.for_model(model, (3, 224, 224))
    assert [len(u) for u in table.units] == units
    assert table.full == _analytic_flops(model.backbone, 224)
    # every non-first unit of a stage costs the same
    assert all(len(set(stage[1:])) == 1 for stage in table.units)
    print(arch, table.full, [stage[:2] for stage in table.units])
