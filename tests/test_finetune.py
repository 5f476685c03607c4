"""Fine-tuning (``--init-from``): exact loading, one-line refusals, crash-safe resume."""

from __future__ import annotations

import json

import pytest
import torch

from pact_pyro import cli
from pact_pyro.checkpoint import load_checkpoint
from pact_pyro.data import batches, load_dataset
from pact_pyro.finetune import export_backbone, init_backbone, load_backbone_source, truncate_backbone
from pact_pyro.threshold import threshold
from pact_pyro.train import TrainConfig, build, load_run
from tests.common import assert_identical, kill_after_first_checkpoint

BASE = ["--dataset", "mnist", "--train-subset", "48", "--batch-size", "16", "--device", "cpu",
        "--no-eval", "--no-progress"]  # fmt: skip


@pytest.fixture
def plain_run(tiny_root, tmp_path, one_thread):
    out = tmp_path / "plain"
    argv = [
        "train",
        *BASE,
        "--method",
        "plain",
        "--depth",
        "14",
        "--epochs",
        "2",
        "--data-root",
        str(tiny_root),
    ]
    assert cli.main([*argv, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("method", ["pact", "act", "spatial-pact"])
def test_init_from_gives_the_source_logits_with_every_unit(plain_run, tiny_root, method):
    src_model, _, src_cfg = load_run(plain_run, "cpu")
    x, _ = next(batches(load_dataset("mnist", False, tiny_root), 32))
    with torch.no_grad():
        want = src_model.backbone(x)
    cfg = TrainConfig(dataset="mnist", depth=14, method=method, init_from=str(plain_run), tau=0.05)
    model, guide = build(cfg, load_backbone_source(cfg.init_from))
    model.eval()
    guide.eval()
    with torch.no_grad():
        if method != "act":
            got = threshold(model, guide, x, threshold=1.0)  # h >= 1 never holds: every unit runs
            assert got.units.eq(torch.tensor(model.units_per_block)).all()
            got = got.logits
        else:
            got = model.backbone(x)  # ACT's backbone with every unit is the plain network
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    # the heads are fresh: bias -3 as in SACT
    heads = model.heads if method == "act" else guide.heads
    spatial = method == "spatial-pact"
    bias = [h.local_conv.bias if spatial else h.linear.bias for block in heads for h in block]
    assert all(float(b.detach()) == -3.0 for b in bias)


def test_init_from_state_dict_file_and_checksum(plain_run, tiny_root, tmp_path):
    file = tmp_path / "plain14.pt"
    digest = export_backbone(plain_run, file)
    state = torch.load(file, weights_only=True)
    assert set(state) == set(load_run(plain_run, "cpu")[0].backbone.state_dict())
    # the documented Python route keeps working
    model, _ = build(TrainConfig(dataset="mnist", depth=14))
    model.backbone.load_state_dict(state)
    out = tmp_path / "ft"
    argv = ["train", *BASE, "--depth", "14", "--epochs", "1", "--init-from", str(file)]
    assert cli.main([*argv, "--data-root", str(tiny_root), "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["init_from"] == str(file) and cfg["init_from_sha256"] == digest
    load_run(out, "cpu")  # the extra config key does not break loading


@pytest.mark.parametrize(
    ("extra", "key", "shapes"),
    [
        (["--depth", "20"], "blocks.0.2.bn1.weight", "is missing"),  # more units than the source
        (["--depth", "8"], "blocks.0.1.bn1.weight", "the source has key"),  # fewer
        (
            ["--dataset", "cifar10", "--depth", "14"],
            "stem.weight",
            "(16, 1, 3, 3) in the source and (16, 3, 3, 3)",
        ),
    ],
)
def test_init_from_mismatch_is_one_line_and_writes_nothing(
    plain_run, tiny_root, tmp_path, capsys, extra, key, shapes
):
    out = tmp_path / "ft"
    argv = ["train", *BASE, "--epochs", "1", "--init-from", str(plain_run), *extra]
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--data-root", str(tiny_root), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert f"init_from={str(plain_run)!r}" in err and repr(key) in err and shapes in err, err
    assert not out.exists()


def test_init_from_classes_mismatch_names_the_classifier(tmp_path):
    model, _ = build(TrainConfig(dataset="mnist", depth=8))
    src = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    fc = [k for k in src if src[k].dim() == 2][0]
    src[fc] = torch.zeros(5, src[fc].shape[1])
    with pytest.raises(ValueError, match=rf"'{fc}' has shape \(5, 64\) in the source and \(10, 64\)"):
        init_backbone(model.backbone, src, "x.pt")


def test_init_from_missing_source(tiny_root, tmp_path, capsys):
    out = tmp_path / "ft"
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", *BASE, "--init-from", str(tmp_path / "nope"), "--data-root", str(tiny_root),
                  "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "init_from=" in err and "does not exist" in err and not out.exists()


def test_finetune_sigkill_then_resume_is_bit_identical(plain_run, tiny_root, tmp_path):
    argv = ["train", *BASE, "--depth", "14", "--epochs", "2", "--seed", "3", "--checkpoint-every", "2",
            "--init-from", str(plain_run), "--data-root", str(tiny_root)]  # fmt: skip
    full, killed = tmp_path / "full", tmp_path / "killed"
    ckpt = killed / "checkpoint.pt"
    kill_after_first_checkpoint(
        [*argv, "--out", str(killed)], ckpt, lambda: cli.main([*argv, "--out", str(full)]) == 0
    )
    assert 0 < load_checkpoint(ckpt)["step"] < 6
    assert cli.main([*argv, "--out", str(killed), "--resume"]) == 0
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(ckpt)
    for key in ("model", "guide", "optim", "rng"):
        assert_identical(a[key], b[key], key)


def test_truncate_backbone_is_pact_stopped_at_those_units(one_thread):
    """``truncate_backbone(state, units)`` loads into ``ResNetBackbone(units)`` and gives the logits of PACT
    on the source network when every image halts at ``N_b = units[b]`` (heads forced), to 1e-6."""
    from pact_pyro.guides import StraightThroughGuide
    from pact_pyro.models import pact_resnet

    from pact_pyro.nn.backbone import ResNetBackbone

    torch.manual_seed(0)
    model = pact_resnet(20)
    guide = StraightThroughGuide(model)
    for bn in (m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    units = [1, 2, 3]
    with torch.no_grad():
        for b, heads in enumerate(guide.heads):
            for l, head in enumerate(heads):  # head l decides after unit l + 1: halt exactly at unit units[b]
                head.linear.weight.zero_()
                head.linear.bias.fill_(30.0 if l + 1 == units[b] else -30.0)
    model.eval(), guide.eval()
    x = torch.randn(6, 3, 32, 32)
    expected = threshold(model, guide, x)
    assert expected.units.tolist() == [units] * 6
    cut = ResNetBackbone(units).eval()
    cut.load_state_dict(truncate_backbone(model.backbone.state_dict(), units), strict=True)
    torch.testing.assert_close(cut(x), expected.logits, atol=1e-6, rtol=0)
    whole = truncate_backbone(model.backbone.state_dict(), [3, 3, 3])
    assert whole.keys() == model.backbone.state_dict().keys()
    with pytest.raises(ValueError, match=r"units=\[1, 4, 3\] must lie in 1..L_b per block.*\[3, 3, 3\]"):
        truncate_backbone(model.backbone.state_dict(), [1, 4, 3])
    with pytest.raises(ValueError, match=r"units=\[1, 2\] must give one count per block; the source has 3"):
        truncate_backbone(model.backbone.state_dict(), [1, 2])


def test_static_depth_from_scratch_uses_the_stage1_recipe(tiny_root, tmp_path, one_thread, capsys):
    """Without ``--source`` ``examples/static_depth.py`` trains ``ResNetBackbone(units)`` from fresh weights
    with the long preset's stage-1 recipe (LR 0.1, 2 % warm-up), and evaluates exactly those units; a unit
    count below 1 is refused before anything is written."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "static_depth.py"
    spec = importlib.util.spec_from_file_location("static_depth", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    common = ["--dataset", "mnist", "--data-root", str(tiny_root), "--train-subset", "32", "--test-subset",
              "16", "--batch-size", "16", "--epochs", "1"]  # fmt: skip
    with pytest.raises(SystemExit):
        mod.main(["--units", "1", "0", "2", *common, "--out", str(tmp_path / "bad")])
    assert "--units must be positive unit counts per block, got [1, 0, 2]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert mod.main(["--units", "1", "1", "2", *common, "--out", str(tmp_path / "s")]) == 0
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (cfg["init_from"], cfg["lr"], cfg["lr_warmup"], cfg["extra"]) == (
        None,
        0.1,
        0.02,
        {"units": [1, 1, 2]},
    )
    result = json.loads((tmp_path / "s" / "eval.json").read_text())
    assert result["units_mean"] == [1.0, 1.0, 2.0] and result["source"] is None and result["examples"] == 16
