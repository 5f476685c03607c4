"""Image folders at scale (``--dataset imagefolder``): torchvision's ``ImageFolder`` streamed by a
``DataLoader`` with workers, the standard ImageNet transforms, pinned memory on CUDA.

Layout: ``DATA_ROOT/train/<class>/*.jpg`` and ``DATA_ROOT/val/<class>/*.jpg``. Training images get
``RandomResizedCrop(image_size)`` and a horizontal flip, evaluation images ``Resize(image_size · 256/224)``
and ``CenterCrop(image_size)`` (224 → 256 → 224, the ImageNet protocol); both are normalised with ImageNet's
channel mean and std. Only the file list is held in memory (:class:`FolderData`): images are decoded by the
loader's workers as batches are drawn, so memory does not grow with the folder.

The data order is a permutation drawn from the trainer's seeded generator and the workers' augmentation
seeds come from it too, so runs are reproducible for a fixed ``workers``; a resumed run re-reads (and
re-augments) the batches of the interrupted epoch it has already trained on to reach its position.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["FolderData", "folder_transforms", "count_classes", "load_image", "IMAGENET_MEAN", "IMAGENET_STD"]

#: ImageNet's channel mean (torchvision's pretrained weights expect it)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: ImageNet's channel standard deviation
IMAGENET_STD = (0.229, 0.224, 0.225)


def folder_transforms(image_size: int, train: bool):
    """ImageNet transforms at ``image_size``: random resized crop + flip (train), resize + centre crop."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *norm])
    return T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), *norm])


def load_image(path: str):
    """The RGB image at ``path`` (PIL), decoded in full; a file that cannot be decoded (corrupt, truncated,
    not an image) raises ``ValueError`` naming it, also from inside a ``DataLoader`` worker."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(
            f"image file {str(path)!r} could not be decoded ({type(e).__name__}: {e}); remove or replace it"
        ) from None


def _split_dir(root: str | os.PathLike, split: str) -> Path:
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"data_root={str(root)!r} has no {split}/ folder (expected {split}/<class>/<image> for "
            "--dataset imagefolder)"
        )
    return folder


def count_classes(root: str | os.PathLike) -> int:
    """Class folders under ``root/train`` (what the classifier's size must be)."""
    return sum(1 for p in _split_dir(root, "train").iterdir() if p.is_dir())


class FolderData:
    """One split of an image folder: the file list and labels, decoded on demand.

    :param root: the data root (with ``train/`` and ``val/``). :param split: ``train`` or ``val``.
    :param image_size: side of the square crops. :param workers: ``DataLoader`` worker processes.
    """

    name = "imagefolder"

    def __init__(self, root: str | os.PathLike, split: str, image_size: int = 224, workers: int = 2) -> None:
        from torchvision.datasets import ImageFolder

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
        self.dataset = ImageFolder(
            str(_split_dir(root, split)),
            transform=folder_transforms(image_size, split == "train"),
            loader=load_image,
        )
        self.indices = torch.arange(len(self.dataset))
        self.labels = torch.tensor(self.dataset.targets, dtype=torch.int64)
        self.classes = len(self.dataset.classes)
        self.image_size, self.workers = image_size, workers

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def subset(self, n: int | None, seed: int = 0) -> FolderData:
        """A fixed random subset of ``n`` images (all when ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return self
        out = copy.copy(self)  # the same dataset (file list, transforms), fewer indices
        pick = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        out.indices, out.labels = self.indices[pick], self.labels[pick]
        return out

    def _loader(self, order: torch.Tensor, batch_size: int, device, seed: int | None):
        from torch.utils.data import DataLoader, Subset

        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return DataLoader(
            Subset(self.dataset, order.tolist()),
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.workers,
            pin_memory=torch.device(device).type == "cuda",
            generator=gen,  # the workers' augmentation seeds
        )

    def shuffled_batches(
        self, batch_size: int, generator: torch.Generator, device, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One training epoch for this rank: a permutation from ``generator``, whole global batches only,
        rank ``r`` taking rows ``r::world_size`` of each (the same data order for any number of processes)."""
        order = self.indices[torch.randperm(len(self), generator=generator)]
        m = len(order) - len(order) % batch_size
        mine = order[:m].view(-1, batch_size)[:, rank::world_size].reshape(-1)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        for x, y in self._loader(mine, batch_size // world_size, device, seed):
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def batches(self, batch_size: int, device="cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split in order (evaluation), ``(x [b, 3, s, s], y [b])`` on ``device``."""
        for x, y in self._loader(self.indices, batch_size, device, None):
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
