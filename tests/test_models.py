import pytest
import torch
from pact_pyro.guides import RelaxedBernoulliGuide, StraightThroughGuide, get_guide
from pact_pyro.models import pact_resnet
from pyro import poutine

from pact_pyro.priors import TruncatedGeometric, TruncatedPoisson
from tests.common import tiny_model


@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_trace_shapes_and_site_names(in_channels, size):
    model = pact_resnet(20, in_channels=in_channels)
    guide = RelaxedBernoulliGuide(model)
    x, y = torch.randn(2, in_channels, size, size), torch.tensor([3, 7])
    guide(x, y)
    trace, _ = guide.get_traces()
    trace.compute_log_prob()
    names = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert names == [
        "u_0_0",
        "u_0_1",
        "z_0",
        "units_0",
        "u_1_0",
        "u_1_1",
        "z_1",
        "units_1",
        "u_2_0",
        "u_2_1",
        "z_2",
        "units_2",
        "y",
    ]
    for b in range(3):
        z = trace.nodes[f"z_{b}"]
        assert z["value"].shape == (2, 2) and z["log_prob"].shape == (2,)
        assert ((0 < z["value"]) & (z["value"] < 1)).all()  # relaxed
        assert trace.nodes[f"units_{b}"]["value"].shape == (2,)
        assert [f.name for f in z["cond_indep_stack"]] == ["data"]
    assert trace.nodes["y"]["log_prob"].shape == (2,)
    side = {28: [28, 14, 7], 32: [32, 16, 8]}[size]
    assert [trace.nodes[f"u_{b}_0"]["value"].shape[-1] for b in range(3)] == side


def test_model_without_guide_samples_binary_z_and_y():
    model = tiny_model()
    trace = poutine.trace(model.model).get_trace(torch.randn(5, 1, 12, 12))
    for b in range(3):
        z = trace.nodes[f"z_{b}"]["value"]
        assert set(z.unique().tolist()) <= {0.0, 1.0} and (z.sum(-1) <= 1).all()
    y = trace.nodes["y"]["value"]
    assert y.shape == (5,) and not trace.nodes["y"]["is_observed"]


def test_guide_with_y_none_samples_y():
    model = tiny_model()
    samples = RelaxedBernoulliGuide(model)(torch.randn(3, 1, 12, 12))
    assert samples["y"].shape == (3,)


def test_straight_through_gives_hard_values_and_relaxed_gradients():
    model = tiny_model()
    guide = StraightThroughGuide(model, temperature=1.0)
    guide(torch.randn(6, 1, 12, 12), torch.randint(0, 3, (6,)))
    trace, _ = guide.get_traces()
    z = trace.nodes["z_0"]["value"]
    assert set(z.detach().unique().tolist()) <= {0.0, 1.0}
    assert z.requires_grad


def test_per_block_priors_and_units_deterministic():
    model = tiny_model(prior=[TruncatedGeometric(0.1), TruncatedPoisson(2.0), TruncatedGeometric(1.0)])
    assert [type(p).__name__ for p in model.priors] == [
        "TruncatedGeometric",
        "TruncatedPoisson",
        "TruncatedGeometric",
    ]
    with pytest.raises(ValueError, match="sequence of 3"):
        tiny_model(prior=[TruncatedGeometric(0.1)])


def test_bad_inputs_name_the_argument():
    model = tiny_model()
    guide = RelaxedBernoulliGuide(model)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, H, W\].*\(2, 3, 12, 12\)"):
        guide(torch.randn(2, 3, 12, 12))
    with pytest.raises(ValueError, match=r"y must lie in 0..2, got values 0..5"):
        guide(torch.randn(2, 1, 12, 12), torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="y must hold integer"):
        guide(torch.randn(2, 1, 12, 12), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        RelaxedBernoulliGuide(model, temperature=0)
    with pytest.raises(ValueError, match="guide must be one of"):
        get_guide("nope", model)
    with pytest.raises(ValueError, match="depth must be 6n\\+2"):
        pact_resnet(21)


def test_low_temperature_warns():
    with pytest.warns(RuntimeWarning, match="temperature=0.01"):
        RelaxedBernoulliGuide(tiny_model(), temperature=0.01)


def test_relaxed_sample_keeps_gradient_when_head_saturates():
    from pact_pyro.relaxed import RelaxedBernoulli

    # |logit| = 20 > 15.9: torch's probs-space sampler clamps the probability and its gradient is exactly 0;
    # at temperature 5 the sample itself is far from saturation, so the logit-space sampler has a gradient.
    for cls, has_grad in [(RelaxedBernoulli, True), (torch.distributions.RelaxedBernoulli, False)]:
        logits = torch.tensor([20.0, -20.0], requires_grad=True)
        z = cls(torch.tensor(5.0), logits=logits).rsample(torch.Size([1000]))
        z.sum().backward()
        assert bool((logits.grad.abs() > 0).all()) is has_grad, cls
    d = RelaxedBernoulli(torch.tensor(0.5), logits=torch.tensor([100.0, -100.0]))
    assert torch.isfinite(d.log_prob(torch.tensor([0.5, 0.5]))).all()


def test_spatial_mean_matches_mean_and_its_gradient():
    from pact_pyro.nn import spatial_mean

    torch.manual_seed(0)
    u = torch.randn(3, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(spatial_mean(u), u.mean(dim=(2, 3)), rtol=0, atol=0)
    assert torch.autograd.gradcheck(spatial_mean, (u,))
    # used twice, like u^l feeding its halting head and the next unit: gradients add up as for .mean
    g1 = torch.autograd.grad((spatial_mean(u) ** 2).sum() + (u**3).sum(), u)[0]
    g2 = torch.autograd.grad((u.mean(dim=(2, 3)) ** 2).sum() + (u**3).sum(), u)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"u must have shape \[B, C, H, W\]"):
        spatial_mean(torch.ones(2, 3))


# dynamo reads .grad of non-leaf tensors while tracing; under the suite's warnings-as-errors that warning
# would abort compilation (outside pytest nothing is shown)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_compiled_units_match_eager_and_train_through_svi(tmp_path, data_root):
    """``ResNetBackbone.compile_units`` (torch.compile of each residual branch) gives the eager values and
    gradients, and ``pact-pyro train --compile`` runs SVI steps with it (no retained graph)."""
    import copy
    import json

    from pact_pyro.cli import main
    from pact_pyro.nn import ResNetBackbone

    torch.manual_seed(0)
    eager = ResNetBackbone([2, 1, 1], (4, 8, 8), in_channels=1, num_classes=3)
    compiled = copy.deepcopy(eager).compile_units()
    x = torch.randn(4, 1, 8, 8)
    for net in (eager, compiled):
        net(x).square().sum().backward()
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "mnist", "--depth", "14", "--epochs", "1", "--train-subset", "64",
            "--test-subset", "32", "--batch-size", "32", "--data-root", str(data_root), "--out", str(out),
            "--no-progress", "--compile", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["compile"] is True
    assert (out / "checkpoint.pt").is_file()
