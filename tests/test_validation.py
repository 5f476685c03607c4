"""Bad inputs at every public entry point give one clear error naming the argument, the value and what was
expected. ``CASES`` doubles as the table of bad inputs of the issue-8 report:
``python tests/test_validation.py`` prints it.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from pact_pyro.guides import get_guide
from pact_pyro.models import pact_resnet

from pact_pyro import cli
from pact_pyro.objective import MAPObjective
from pact_pyro.priors import CategoricalUnits, TruncatedGeometric, TruncatedPoisson, get_prior
from pact_pyro.threshold import threshold
from pact_pyro.train import TrainConfig, resolve_device

NAN, INF = math.nan, math.inf


def _setup():
    torch.manual_seed(0)
    model = pact_resnet(14, 10, 1)
    guide = get_guide("relaxed", model)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    return model, guide, x, y


def _loss(x=None, y=None):
    model, guide, x0, y0 = _setup()
    return MAPObjective()(model.model, guide, x0 if x is None else x, y0 if y is None else y)


def _thr(x=None, t=0.5, mode="threshold"):
    model, guide, x0, _ = _setup()
    return threshold(model, guide, x0 if x is None else x, t, mode)


def _x(f):
    return f(torch.randn(4, 1, 8, 8))


# (entry point and bad input, call, exception, regex of the message)
CASES = [
    (
        "model: x with NaN",
        lambda: _loss(x=_x(lambda x: x.index_fill(0, torch.tensor([1]), NAN))),
        ValueError,
        r"x must be finite, got 64 NaN/inf values",
    ),
    (
        "model: x with inf",
        lambda: _loss(x=_x(lambda x: x.index_fill(3, torch.tensor([0]), INF))),
        ValueError,
        r"x must be finite, got 32 NaN/inf",
    ),
    (
        "model: x float64, net float32",
        lambda: _loss(x=_x(lambda x: x.double())),
        TypeError,
        r"x has dtype torch.float64 but the network has torch.float32",
    ),
    (
        "model: x uint8",
        lambda: _loss(x=_x(lambda x: x.to(torch.uint8))),
        TypeError,
        r"x must be floating point",
    ),
    (
        "model: x on another device (meta)",
        lambda: _loss(x=_x(lambda x: x.to("meta"))),
        ValueError,
        r"x is on device meta but the network is on cpu",
    ),
    ("model: x 3-D", lambda: _loss(x=_x(lambda x: x[0])), ValueError, r"x must have shape \[B, 1, H, W\]"),
    ("model: x 3 channels", lambda: _loss(x=torch.randn(4, 3, 8, 8)), ValueError, r"got \(4, 3, 8, 8\)"),
    (
        "model: x 2x2 pixels",
        lambda: _loss(x=_x(lambda x: x[..., :2, :2])),
        ValueError,
        r"at least 4x4 pixels",
    ),
    (
        "model: x a list",
        lambda: _loss(x=torch.randn(4, 1, 8, 8).tolist()),
        TypeError,
        r"x must be a torch.Tensor",
    ),
    (
        "model: y float labels",
        lambda: _loss(y=torch.zeros(4)),
        TypeError,
        r"y must hold integer class labels",
    ),
    (
        "model: y = 10 with 10 classes",
        lambda: _loss(y=torch.tensor([0, 1, 2, 10])),
        ValueError,
        r"y must lie in 0..9",
    ),
    ("model: y = -1", lambda: _loss(y=torch.tensor([0, -1, 2, 3])), ValueError, r"got values -1..3"),
    (
        "model: 3 labels for 4 images",
        lambda: _loss(y=torch.tensor([0, 1, 2])),
        ValueError,
        r"1-D tensor of 4 labels",
    ),
    (
        "model: y on another device",
        lambda: _loss(y=torch.zeros(4, dtype=torch.long, device="meta")),
        ValueError,
        r"y is on device meta but x is on cpu",
    ),
    (
        "model: training batch of 1",
        lambda: _loss(x=torch.randn(1, 1, 8, 8), y=torch.tensor([0])),
        ValueError,
        r"training needs batches of >= 2 examples",
    ),
    ("model: depth 9", lambda: pact_resnet(9), ValueError, r"depth must be 6n\+2 .* got 9"),
    (
        "model: CategoricalUnits of the wrong length",
        lambda: pact_resnet(14, prior=CategoricalUnits([1, 1, 1])),
        ValueError,
        r"has 3 probabilities but the block has L=2",
    ),
    (
        "model: prior not a UnitsPrior",
        lambda: pact_resnet(14, prior="geometric"),
        ValueError,
        r"prior must be a UnitsPrior",
    ),
    (
        "guide: temperature 0",
        lambda: get_guide("relaxed", _setup()[0], temperature=0),
        ValueError,
        r"temperature must be a finite number > 0, got 0",
    ),
    (
        "guide: temperature NaN",
        lambda: get_guide("relaxed", _setup()[0], temperature=NAN),
        ValueError,
        r"got nan",
    ),
    (
        "guide: bias_init inf",
        lambda: get_guide("relaxed", _setup()[0], bias_init=INF),
        ValueError,
        r"bias_init must be a finite halting logit, got inf",
    ),
    ("guide: unknown name", lambda: get_guide("gumbel", _setup()[0]), ValueError, r"guide must be one of"),
    (
        "guide: not a PACT model",
        lambda: get_guide("relaxed", torch.nn.Linear(2, 2)),
        TypeError,
        r"model must be a PACT model with .model",
    ),
    (
        "prior: tau -1",
        lambda: TruncatedGeometric(-1),
        ValueError,
        r"tau must be a finite number >= 0, got -1.0",
    ),
    ("prior: tau inf", lambda: TruncatedGeometric(INF), ValueError, r"got inf"),
    ("prior: Poisson rate 0", lambda: TruncatedPoisson(0), ValueError, r"rate must be a finite number > 0"),
    (
        "prior: negative probabilities",
        lambda: CategoricalUnits([0.5, -0.1]),
        ValueError,
        r"probs must be finite, >= 0",
    ),
    ("prior: unknown name", lambda: get_prior("exponential"), ValueError, r"prior must be one of"),
    ("objective: plate not a string", lambda: MAPObjective(plate=3), TypeError, r"plate must be the name"),
    (
        "objective: model without the plate",
        lambda: MAPObjective("batch")(_setup()[0].model, _setup()[1], *_setup()[2:]),
        ValueError,
        r"no plate named 'batch'",
    ),
    ("threshold: 0", lambda: _thr(t=0.0), ValueError, r"threshold must be in \(0, 1\], got 0.0"),
    ("threshold: NaN", lambda: _thr(t=NAN), ValueError, r"got nan"),
    ("threshold: 1.5", lambda: _thr(t=1.5), ValueError, r"got 1.5"),
    (
        "threshold: mode 'argmax'",
        lambda: _thr(mode="argmax"),
        ValueError,
        r"mode must be 'threshold' or 'sample'",
    ),
    ("threshold: x with NaN", lambda: _thr(x=torch.full((2, 1, 8, 8), NAN)), ValueError, r"x must be finite"),
    ("device: 'gpu'", lambda: resolve_device("gpu"), ValueError, r"device must be auto, cpu, cuda or cuda:N"),
    (
        "config: lr inf",
        lambda: TrainConfig(lr=INF).validate(),
        ValueError,
        r"lr must be a finite number > 0, got inf",
    ),
    (
        "config: batch_size 1",
        lambda: TrainConfig(batch_size=1).validate(),
        ValueError,
        r"batch_size must be an integer >= 2",
    ),
    ("config: batch_size 3.5", lambda: TrainConfig(batch_size=3.5).validate(), ValueError, r"got 3.5"),
    (
        "config: epochs NaN",
        lambda: TrainConfig(epochs=NAN).validate(),
        ValueError,
        r"epochs must be a finite number",
    ),
    (
        "config: weight_decay -1",
        lambda: TrainConfig(weight_decay=-1).validate(),
        ValueError,
        r"weight_decay must be",
    ),
    (
        "config: checkpoint_every -5",
        lambda: TrainConfig(checkpoint_every=-5).validate(),
        ValueError,
        r"checkpoint_every must be an integer >= 0",
    ),
    (
        "config: log_every 0",
        lambda: TrainConfig(log_every=0).validate(),
        ValueError,
        r"log_every must be an integer >= 1",
    ),
    (
        "config: train_subset 0",
        lambda: TrainConfig(train_subset=0).validate(),
        ValueError,
        r"train_subset must be None",
    ),
    (
        "config: device 'tpu'",
        lambda: TrainConfig(device="tpu").validate(),
        ValueError,
        r"device must be auto, cpu or cuda",
    ),
]


@pytest.mark.parametrize("what, call, exc, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named(what, call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_low_temperature_warns():
    with pytest.warns(RuntimeWarning, match=r"temperature=0.01 < 0.1: most relaxed halting gradients"):
        get_guide("relaxed", _setup()[0], temperature=0.01)


def test_eval_mode_scores_single_examples():
    model, guide, x, y = _setup()
    model.eval()
    guide.eval()
    assert math.isfinite(float(MAPObjective()(model.model, guide, x[:1], y[:1]).detach()))


# CLI: one line "pact-pyro: error: ..." and exit status 2, no traceback.
CLI_CASES = [
    ("train --depth 9", ["train", "--depth", "9", "--out", "{tmp}/r"], "depth must be 6n+2"),
    (
        "train --lr nan",
        ["train", "--lr", "nan", "--out", "{tmp}/r"],
        "lr must be a finite number > 0, got nan",
    ),
    (
        "train --batch-size 0",
        ["train", "--batch-size", "0", "--out", "{tmp}/r"],
        "batch_size must be an integer >= 2",
    ),
    (
        "train --device gpu",
        ["train", "--device", "gpu", "--out", "{tmp}/r"],
        "device must be auto, cpu or cuda",
    ),
    (
        "train --amp on CPU",
        ["train", "--amp", "--device", "cpu", "--out", "{tmp}/r"],
        "amp=True (bf16 autocast) needs",
    ),
    (
        "train --checkpoint-every -1",
        ["train", "--checkpoint-every", "-1", "--out", "{tmp}/r"],
        "checkpoint_every must",
    ),
    (
        "train --data-root missing",
        ["train", "--device", "cpu", "--data-root", "{tmp}/none", "--out", "{tmp}/r"],
        "data root",
    ),
    (
        "train into an existing run",
        ["train", "--device", "cpu", "--out", "{tmp}"],
        "already exists and is not empty",
    ),
    ("evaluate a missing run", ["evaluate", "{tmp}/none"], "has no config.json and checkpoint.pt"),
    (
        "evaluate --threshold 2",
        ["evaluate", "{tmp}/run", "--threshold", "2", "--device", "cpu"],
        "threshold must be in",
    ),
    ("evaluate --device gpu", ["evaluate", "{tmp}/run", "--device", "gpu"], "device must be auto, cpu, cuda"),
    (
        "evaluate --chunk-size 0",
        ["evaluate", "{tmp}/run", "--chunk-size", "0"],
        "chunk_size must be None or an int",
    ),
]


@pytest.mark.parametrize("what, argv, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_prints_one_line(what, argv, message, tmp_path, capsys):
    import dataclasses
    import json

    from pact_pyro import checkpoint as ck
    from pact_pyro.train import build

    run = tmp_path / "run"  # a valid (untrained) run directory for the evaluate cases
    run.mkdir()
    cfg = TrainConfig(depth=8, device="cpu", data_root=str(tmp_path / "none"))
    model, guide = build(cfg)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    state = {
        "format": ck.FORMAT,
        "version": ck.VERSION,
        "config": dataclasses.asdict(cfg),
        "step": 0,
        "epoch": 0,
    }
    ck.atomic_save({**state, "model": model.state_dict(), "guide": guide.state_dict()}, run / "checkpoint.pt")
    with pytest.raises(SystemExit) as exc:
        cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("pact-pyro: error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err, err


if __name__ == "__main__":  # the bad-input table of the report
    warnings.simplefilter("error")
    print("| entry point: bad input | error |\n|---|---|")
    for what, call, _, _ in CASES:
        try:
            call()
            msg = "(no error)"
        except Exception as err:  # noqa: BLE001
            msg = f"{type(err).__name__}: {err}"
        print(f"| {what} | `{msg}` |")
