"""Per-test rules (as in Pyro's conftest): fixed seeds, a clean param store, Pyro validation on."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyro
import pytest
import torch

SHARED_DATA = Path(
    os.environ.get("PACT_PYRO_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.set_num_threads(int(os.environ.get("PACT_PYRO_TEST_THREADS", "2")))
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A writable copy of the offline datasets (MNIST unpacking writes next to the .gz files)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline data not found at {SHARED_DATA} (set PACT_PYRO_TEST_DATA)")
    root = tmp_path_factory.mktemp("data")
    for name in ("mnist", "fashion-mnist"):
        if (SHARED_DATA / name).is_dir():
            shutil.copytree(SHARED_DATA / name, root / name)
            for p in (root / name).rglob("*"):
                p.chmod(0o755 if p.is_dir() else 0o644)
    if (SHARED_DATA / "cifar10-jpeg").is_dir():
        (root / "cifar10-jpeg").symlink_to(SHARED_DATA / "cifar10-jpeg")
    return root


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    from tests.common import tiny_mnist

    return tiny_mnist(tmp_path / "data")


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
