"""Datasets as in-memory tensors, and a minimal shuffling batch iterator.

Loading uses torchvision's own code (``MNIST``/``FashionMNIST``/``CIFAR10`` with ``download=True``, which only
downloads when the files are missing), plus ``ImageFolder`` for the offline CIFAR-10 JPEG copy
(``<root>/cifar10-jpeg/{train,test}/<class>/*.jpg``). Data root: ``--data-root``, else ``$PACT_PYRO_DATA``,
else ``./data``. Layout under the root (the same as ``../shared/data``)::

    mnist/MNIST/raw/*.gz   fashion-mnist/FashionMNIST/raw/*.gz   cifar10-jpeg/{train,test}/   or cifar10/

Whole datasets fit in memory (MNIST 47 MB, CIFAR-10 180 MB as uint8), so batches are sliced from one tensor:
faster on 2 cores than a per-example ``DataLoader``. Decoded JPEGs are cached as ``.pt`` under
``~/.cache/pact-pyro`` (the data folder itself is never written).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["DATASETS", "CLASS_NAMES", "TensorData", "load_dataset", "resolve_data_root", "batches"]

#: ``name → (channels, size, classes, mean, std)`` of the supported image datasets
DATASETS = {
    # name: (channels, size, classes, mean, std)
    "mnist": (1, 28, 10, (0.1307,), (0.3081,)),
    "fashion-mnist": (1, 28, 10, (0.2860,), (0.3530,)),
    "cifar10": (3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


#: class names where the dataset has them (plots label images with them)
CLASS_NAMES = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "fashion-mnist": (
        "T-shirt",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "boot",
    ),
}


@dataclass
class TensorData:
    """``images`` uint8 ``[n, C, H, W]``, ``labels`` int64 ``[n]``, and the dataset name."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, n: int | None, seed: int = 0) -> TensorData:
        """A fixed random subset of ``n`` examples (all when ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"subset size must be >= 1, got {n}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return TensorData(self.images[idx], self.labels[idx], self.name)

    @property
    def classes(self) -> int:
        return DATASETS[self.name][2]


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """``data_root``, else ``$PACT_PYRO_DATA``, else ``./data``."""
    return Path(data_root or os.environ.get("PACT_PYRO_DATA") or "data")


def _torchvision_set(name: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tvd

    cls, sub = {"mnist": (tvd.MNIST, "mnist"), "fashion-mnist": (tvd.FashionMNIST, "fashion-mnist")}.get(
        name, (tvd.CIFAR10, "cifar10")
    )
    try:
        return cls(root=str(root / sub), train=train, download=download)
    except RuntimeError as err:  # "Dataset not found. You can use download=True to download it"
        raise FileNotFoundError(
            f"{name} not found under data root {str(root)!r} ({err}); pass --data-root or set PACT_PYRO_DATA "
            "to a folder holding it (offline: a writable copy of shared/data)"
        ) from None


def _load_jpeg_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import hashlib

    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    cache = Path.home() / ".cache" / "pact-pyro" / f"{folder.parent.name}-{folder.name}-{key}.pt"
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        return blob["images"], blob["labels"]
    ds = ImageFolder(str(folder))
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda it, **kw: it  # noqa: E731
    images = torch.stack(
        [
            pil_to_tensor(ds.loader(p).convert("RGB"))
            for p, _ in tqdm(ds.samples, desc=f"decode {folder.name}")
        ]
    )
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per writer: two sweep workers decoding the same folder at once each rename
    # a complete file onto the cache (the last one wins, both identical) instead of racing on one .tmp.
    fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=cache.stem + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"images": images, "labels": labels}, tmp)
        os.replace(tmp, cache)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return images, labels


def load_dataset(
    name: str, train: bool, data_root: str | os.PathLike | None = None, download: bool = True
) -> TensorData:
    """Load a whole split as uint8 tensors. ``name`` ∈ ``mnist``, ``fashion-mnist``, ``cifar10``."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    root = resolve_data_root(data_root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {str(root)!r} does not exist; pass --data-root or set PACT_PYRO_DATA "
            "(or create ./data to let torchvision download)"
        )
    if name == "cifar10" and (root / "cifar10-jpeg").is_dir():
        images, labels = _load_jpeg_folder(root / "cifar10-jpeg" / ("train" if train else "test"))
        return TensorData(images, labels, name)
    ds = _torchvision_set(name, root, train, download)
    if name == "cifar10":
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor(ds.targets, dtype=torch.int64)
    else:
        images, labels = ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)
    return TensorData(images, labels, name)


def normalize(images: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` → float, standardised with the dataset's channel mean and std."""
    _, _, _, mean, std = DATASETS[name]
    x = images.float().div_(255)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """CIFAR augmentation (SACT): pad 4, random crop back to size, random flip. ``[B, C, H, W]``."""
    B, _, H, W = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    i = torch.randint(0, 9, (B,), generator=generator)
    j = torch.randint(0, 9, (B,), generator=generator)
    flip = torch.rand(B, generator=generator) < 0.5
    out = torch.empty_like(x)
    for k in range(B):
        crop = padded[k, :, i[k] : i[k] + H, j[k] : j[k] + W]
        out[k] = crop.flip(-1) if flip[k] else crop
    return out


def batches(
    data: TensorData,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    augment_images: bool = False,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x [b, C, H, W] float, y [b] int64)`` on ``device``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for s in range(0, stop, batch_size):
        idx = order[s : s + batch_size]
        x = normalize(data.images[idx], data.name)
        if augment_images:
            x = augment(x, generator if generator is not None else torch.Generator().manual_seed(s))
        yield x.to(device, non_blocking=True), data.labels[idx].to(device, non_blocking=True)
