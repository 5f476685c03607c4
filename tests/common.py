"""Tiny networks, tiny datasets and comparisons shared by tests."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from pact_pyro.guides import RelaxedBernoulliGuide
from pact_pyro.models import PACTResNet

from pact_pyro.nn import ResNetBackbone


def tiny_model(units=(3, 2, 3), widths=(4, 8, 8), in_channels=1, num_classes=3, prior=None) -> PACTResNet:
    return PACTResNet(ResNetBackbone(list(units), widths, in_channels, num_classes), prior)


def randomize_heads(guide, std: float = 3.0, seed: int = 0) -> None:
    """Spread halting logits so that thresholding stops at different units for different examples."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in guide.heads:
            for head in block:
                head.linear.weight.copy_(torch.randn(head.linear.weight.shape, generator=g) * std)
                head.linear.bias.zero_()
                head.bn.running_mean.copy_(torch.randn(head.bn.running_mean.shape, generator=g) * 0.1)


def tiny_pair(**kw):
    model = tiny_model(**kw)
    guide = RelaxedBernoulliGuide(model)
    return model, guide


SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / "MNIST" / "raw"


def tiny_mnist(root: Path, n_train: int = 128, n_test: int = 32) -> Path:
    """The first ``n`` MNIST images and labels as uncompressed idx files under ``root/mnist/MNIST/raw``."""
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"MNIST not found at {SHARED_MNIST}")
    raw = root / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        for kind, header, size in (("images-idx3-ubyte", 16, 784), ("labels-idx1-ubyte", 8, 1)):
            with gzip.open(SHARED_MNIST / f"{split}-{kind}.gz", "rb") as f:
                head, body = bytearray(f.read(header)), f.read(n * size)
            head[4:8] = n.to_bytes(4, "big")
            (raw / f"{split}-{kind}").write_bytes(bytes(head) + body)
    return root


def assert_identical(a, b, where: str = "") -> None:
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max |diff| {(a.double() - b.double()).abs().max()}"
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def kill_after_first_checkpoint(argv: list[str], ckpt: Path, reference: Callable[[], bool]) -> None:
    """Run ``pact-pyro *argv`` in a subprocess (one thread) and SIGKILL it as soon as ``ckpt`` exists, while
    ``reference()`` (the uninterrupted run, which must return True) runs in this process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pact_pyro.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def watch() -> None:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert reference()
    watcher.join()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def crash_at_step(monkeypatch, n: int) -> None:
    """Make the ``n``-th ``SVI.step`` of this process raise ``RuntimeError("simulated crash")`` (undo with
    ``monkeypatch.undo()``)."""
    import pyro

    real_step, calls = pyro.infer.SVI.step, {"n": 0}

    def crashing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("simulated crash")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(pyro.infer.SVI, "step", crashing_step)
