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


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_is_named_in_the_error(folder, workers):
    """A truncated JPEG and a text file posing as one: a ValueError naming the file, also from a worker."""
    bad = folder / "val" / "cat" / "zz_truncated.jpg"
    good = next((folder / "val" / "cat").iterdir()).resolve().read_bytes()
    bad.write_bytes(good[: len(good) // 3])
    (folder / "val" / "ship" / "zz_text.jpg").write_text("not an image")
    data = FolderData(folder, "val", image_size=32, workers=workers)
    with pytest.raises(ValueError, match=r"zz_(truncated|text)\.jpg' could not be decoded"):
        for _ in data.batches(4):
            pass


def _peak_rss_mib(root: Path, n: int) -> float:
    """Peak resident memory (MiB) of a fresh process that reads a folder of ``n`` images once, batch 16."""
    import subprocess
    import sys

    code = (
        "import resource, sys, torch; torch.set_num_threads(1)\n"
        "from pact_pyro.imagefolder import FolderData\n"
        "d = FolderData(sys.argv[1], 'train', image_size=64, workers=0)\n"
        "assert len(d) == int(sys.argv[2]), len(d)\n"
        "s = 0.0\n"
        "for x, _ in d.batches(16): s += float(x.sum())\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root), str(n)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip())


def test_memory_does_not_grow_with_the_folder(tmp_path):
    """Reading 10x more images (2400 vs 240, decoded at 64x64: 118 MB if they were all held) raises the
    reader's peak memory by less than 25 MiB: images are decoded batch by batch and dropped."""
    if not SHARED.is_dir():
        pytest.skip(f"CIFAR-10 JPEGs not found at {SHARED}")
    peaks = {}
    for n in (240, 2400):
        root = tmp_path / f"f{n}"
        for c in CLASSES:
            (root / "train" / c).mkdir(parents=True)
            for p in sorted((SHARED / "train" / c).iterdir())[: n // len(CLASSES)]:
                (root / "train" / c / p.name).symlink_to(p)
        peaks[n] = _peak_rss_mib(root, n)
    assert peaks[2400] - peaks[240] < 25, peaks


def test_two_writers_of_the_decoded_cifar_cache_do_not_collide(folder, tmp_path, monkeypatch):
    """Two sweep workers decoding the CIFAR-10 JPEGs at once: the second finishing while the first is
    still writing must leave both with the images and one complete cache file (they once shared a .tmp)."""
    from pact_pyro import data

    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")
    real_save, nested = torch.save, []

    def save_then_let_another_worker_finish(obj, f):
        real_save(obj, f)
        if not nested:  # the other worker decodes and renames its file while ours waits to be renamed
            nested.append(None)
            nested[0] = data._load_jpeg_folder(folder / "train")

    monkeypatch.setattr(data.torch, "save", save_then_let_another_worker_finish)
    images, labels = data._load_jpeg_folder(folder / "train")
    assert images.shape == (36, 3, 32, 32) and torch.equal(labels, torch.arange(3).repeat_interleave(12))
    assert torch.equal(nested[0][0], images) and torch.equal(nested[0][1], labels)
    (cache,) = (tmp_path / "home" / ".cache" / "pact-pyro").iterdir()  # no .tmp left behind
    assert cache.suffix == ".pt"
    cached, _ = data._load_jpeg_folder(folder / "train")  # the third call reads the cache
    assert torch.equal(cached, images)
