"""Fine-tuning: start a PACT/ACT/plain network from the backbone weights of a trained one.

SACT's ImageNet models are fine-tuned from a pretrained ResNet with freshly initialised halting heads; so are
ours. The source is a run directory written by ``pact-pyro train`` (usually ``--method plain``; its
``checkpoint.pt``) or a ``.pt`` file holding a backbone ``state_dict`` (keys ``stem.weight``, ...) or a whole
model's (keys ``backbone.stem.weight``, ...). Only the backbone loads — strictly, by name and shape; the
halting heads keep their initialisation (bias −3, ``h ≈ 0.047``: every unit runs at first).

From Python the backbone is an ordinary ``nn.Module``::

    model = pact_resnet(20, prior=TruncatedGeometric(0.05))
    model.backbone.load_state_dict(torch.load("plain20.pt", weights_only=True))

and :func:`init_backbone` does the same with a one-line error naming the first mismatching key.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .nn.backbone import init_backbone

__all__ = ["BackboneSource", "load_backbone_source", "init_backbone", "export_backbone", "truncate_backbone"]


class BackboneSource(dict):
    """A backbone ``state_dict`` with where it came from: ``.path`` (the file read) and ``.sha256``."""

    path: Path
    sha256: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_backbone_source(source: str | os.PathLike) -> BackboneSource:
    """Read the backbone weights of ``source`` (a run directory or a ``.pt`` state_dict file).

    Raises ``FileNotFoundError`` when it does not exist and ``ValueError`` (naming ``init_from`` and the path)
    when it holds no backbone weights.
    """
    from .checkpoint import CheckpointError, load_checkpoint

    path = Path(source)
    if path.is_dir():
        path = path / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"init_from={str(source)!r} is a directory without checkpoint.pt")
        state = load_checkpoint(path)["model"]
    elif path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors have many types
            raise ValueError(
                f"init_from={str(source)!r} is not a state_dict file: {err}".split("\n")[0]
            ) from None
        if isinstance(state, dict) and "model" in state and "format" in state:  # a bare checkpoint.pt
            try:
                state = load_checkpoint(path)["model"]
            except CheckpointError as err:
                raise ValueError(f"init_from={str(source)!r}: {err}") from None
    else:
        raise FileNotFoundError(f"init_from={str(source)!r} does not exist (a run directory or a .pt file)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"init_from={str(source)!r} holds no state_dict of tensors")
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    out = BackboneSource(state)
    out.path, out.sha256 = path, _sha256(path)
    return out


def export_backbone(run_dir: str | os.PathLike, path: str | os.PathLike) -> str:
    """Write the backbone ``state_dict`` of a run's checkpoint to ``path`` (atomically); returns its sha256.

    The file is what ``--init-from`` reads, about 1 MB for a CIFAR ResNet-20.
    """
    from .checkpoint import atomic_save

    state = load_backbone_source(run_dir)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(dict(state), path)
    return _sha256(path)


_UNIT_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.")


def truncate_backbone(state: Mapping[str, torch.Tensor], units: Sequence[int]) -> dict[str, torch.Tensor]:
    """The backbone ``state_dict`` of the network that runs only the first ``units[b]`` units of block ``b``:
    the stem, those units and the classifier of ``state``, the rest dropped.

    This is the static network of a depth allocation — e.g. the 1/2/3 units per block that a PACT
    ResNet-20 fine-tuned at τ = 0.1 runs for nearly every image — and loads into
    ``ResNetBackbone(units, ...)``. Its logits equal the source's with each block stopped after ``units[b]``
    units, i.e. PACT's thresholded output for an image whose ``N_b = units[b]``.

    :param state: a ``ResNetBackbone`` ``state_dict`` (keys ``stem.weight``, ``blocks.<b>.<l>.…``, …).
    :param units: ``L_b ≥ 1`` per block, at most the source's units in that block.
    :raises ValueError: naming ``units`` when it has the wrong length or asks for more units than a block has.
    """
    have: dict[int, int] = {}
    for k in state:
        m = _UNIT_KEY.match(k)
        if m:
            b, l = int(m.group(1)), int(m.group(2))
            have[b] = max(have.get(b, 0), l + 1)
    source = [have[b] for b in sorted(have)]
    units = [int(n) for n in units]
    if len(units) != len(source):
        raise ValueError(f"units={units} must give one count per block; the source has {len(source)} blocks")
    if any(not 1 <= n <= L for n, L in zip(units, source, strict=True)):
        raise ValueError(f"units={units} must lie in 1..L_b per block; the source's blocks have {source}")
    out = {}
    for k, v in state.items():
        m = _UNIT_KEY.match(k)
        if m is None or int(m.group(2)) < units[int(m.group(1))]:
            out[k] = v
    return out
