"""--dataset imagefolder: streamed loading, torchvision ResNets end to end on a tiny folder of CIFAR JPEGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from pact_pyro import cli
from pact_pyro.imagefolder import FolderData

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
CLASSES = ("airplane", "cat", "ship")


@pytest.fixture
def folder(tmp_path) -> Path:
    """3 classes, 12 training and 4 validation JPEGs each (links to the offline CIFAR-10 copy)."""
    if not SHARED.is_dir():
        pytest.skip(f"CIFAR-10 JPEGs not found at {SHARED}")
    root = tmp_path / "folder"
    for split, src, n in (("train", "train", 12), ("val", "test", 4)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for p in sorted((SHARED / src / c).iterdir())[:n]:
                (root / split / c / p.name).symlink_to(p)
    return root


def test_batches_are_decoded_on_demand(folder, monkeypatch):
    """Memory does not grow with the folder: one batch opens only its own images."""
    data = FolderData(folder, "train", image_size=32, workers=0)
    opened = []
    real = data.dataset.loader
    monkeypatch.setattr(data.dataset, "loader", lambda p: opened.append(p) or real(p))
    x, y = next(data.shuffled_batches(4, torch.Generator().manual_seed(0), "cpu"))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)
    assert len(opened) == 4 and len(data) == 36  # 4 of 36 images read
    # the order comes from the generator: the same seed, the same first batch
    _, y2 = next(data.shuffled_batches(4, torch.Generator().manual_seed(0), "cpu"))
    assert torch.equal(y, y2)
    val = FolderData(folder, "val", image_size=32, workers=0)
    xs = torch.cat([x for x, _ in val.batches(5)])
    assert xs.shape == (12, 3, 32, 32)


@pytest.mark.parametrize("method", ["pact", "act"])
def test_torchvision_resnet_on_an_image_folder_end_to_end(folder, tmp_path, capsys, method):
    weights = tmp_path / "r18.pt"
    torch.save(
        torchvision.models.resnet18(num_classes=1000).state_dict(), weights
    )  # "pretrained", 1000 classes
    out = tmp_path / "run"
    argv = ["train", "--dataset", "imagefolder", "--data-root", str(folder), "--arch", "resnet18",
            "--weights", str(weights), "--method", method, "--image-size", "32", "--workers", "0",
            "--batch-size", "6", "--epochs", "1", "--tau", "0.05", "--device", "cpu", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["examples"] == 12 and 0 <= res["accuracy"] <= 1 and len(res["units_mean"]) == 4
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["arch"], cfg["num_classes"], cfg["image_size"]) == ("resnet18", 3, 32)
    assert cli.main(["evaluate", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == res["accuracy"]  # load_run rebuilds it exactly


def test_imagefolder_errors_name_the_argument(tmp_path, capsys):
    argv = ["train", "--dataset", "imagefolder", "--arch", "resnet18", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit):
        cli.main([*argv, "--data-root", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no train/ folder" in err and str(tmp_path) in err, err
    with pytest.raises(SystemExit):
        cli.main(["train", "--dataset", "mnist", "--arch", "resnet50", "--out", str(tmp_path / "r2")])
    assert "arch must be 'preact' for the 1-channel mnist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "r2").exists()
