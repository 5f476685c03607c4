"""Sparse evaluation of a residual unit at active spatial positions (spatial halting, as in SACT).

In spatially adaptive computation every position ``(i, j)`` of every example halts on its own. At test time
(eval-mode BatchNorm, no autograd) a unit ``l ≥ 2`` of a block leaves halted positions *frozen*; SACT's code
computes the residual everywhere and masks it (:func:`masked_residual_`)::

    u = u + active[:, None] * unit.residual(u)          # active: bool [B, H, W]

so its FLOP savings never become wall-clock savings. :func:`sparse_residual_` computes the same update, within
float rounding, but only where it is needed:

* ``conv2`` is evaluated at the active positions ``A`` only;
* it reads ``t = act(bn2(conv1(a)))`` at ``D``, the 3×3 dilation of ``A`` (clipped to the image);
* ``conv1`` at ``D`` reads ``a = act(bn1(u))`` at the 3×3 dilation of ``D``. Both convolutions zero-pad
  their *input* at the image border, so ``a`` and ``t`` live in zero-bordered buffers.

Strategies (``strategy=``), all exact:

* ``"gather"``: ``a`` as channels-last rows ``[B·(H+2)·(W+2), C]`` with a zero border; one ``index_select``
  gathers, for every position of ``D``, its 3 horizontal neighbour triples (contiguous ``3·C`` floats each)
  into ``[|D|, 9·C]``, and one ``addmm`` against the ``[9·C, C]`` weight (bn2 folded into it) gives
  ``bn2(conv1(a))``; the same for ``conv2`` at ``A``, gathering 9 rows from a compact buffer of ``t`` whose
  row 0 is the zero padding; one ``index_add_`` adds the result into ``u``. About ten ATen ops per unit; the
  index tensors of all units of a block come from one sort (:func:`run_block_frozen`). On large batches the
  gathered rows are processed in cache-sized chunks (``CHUNK_BYTES``).
* ``"crop"``: the dense unit on the bounding box of ``A`` grown by 2 pixels (union over the batch),
  clipped to the image, then the masked residual added into the box.
* ``"dense"``: :func:`masked_residual_`.

``"auto"`` does nothing when no position is active, and picks ``gather``, or ``dense`` on large batches
whose dilated mask covers most positions (:data:`DENSE_ABOVE`, :data:`DENSE_MIN_POSITIONS`, measured on
CPU). ``crop`` is never faster than ``gather`` in our measurements (at batch 1 a convolution call costs about
as much on a crop as on the whole 32×32 map, and a blob's box grown by 2 pixels is most of the image), but
is kept as an exact alternative.

:func:`run_block_frozen` runs one block of a ResNet with per-position unit counts (the network-level loop,
with the index tensors of all units of a block computed at once), :func:`frozen_forward` a whole
:class:`~pact_pyro.nn.ResNetBackbone`, and :func:`sparse_conv_flops` / :func:`frozen_flops` count FLOPs by
SACT's rules. Pure torch, no Pyro; device-agnostic.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DENSE_ABOVE",
    "DENSE_MIN_POSITIONS",
    "masked_residual_",
    "sparse_residual_",
    "sparse_conv_flops",
    "run_block_frozen",
    "frozen_forward",
    "frozen_flops",
]

#: ``"auto"`` (and :func:`run_block_frozen`) runs the dense masked path for a unit when the batch has more
#: than ``DENSE_MIN_POSITIONS`` positions ``B·H·W`` and the 3×3-dilated mask covers more than
#: ``DENSE_ABOVE`` of them. Measured on CPU (one thread, per-unit timings): up to ~1–2 thousand positions
#: (batch 1 of CIFAR) a convolution call costs more than gathering and multiplying every position, so the
#: gather path wins at any density; at batch 64 mkldnn's channels-last convolution does about twice the
#: FLOPs per second of gather + GEMM, and the gather path wins only below ~55–80% dilated density (lower at
#: 16 channels, higher at 64; a noisy, shared machine).
DENSE_ABOVE = 0.7
#: see :data:`DENSE_ABOVE`: below this many positions ``B·H·W`` the gather path is used at any density
DENSE_MIN_POSITIONS = 2048

STRATEGIES = ("auto", "gather", "crop", "dense")


# --------------------------------------------------------------------------------------------- checks


def _check(unit: nn.Module, u: torch.Tensor, active: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the argument unless ``u`` ``[B, C, H, W]`` and ``active`` bool
    ``[B, H, W]`` fit a stride-1 unit with ``C`` input and output channels."""
    if not isinstance(u, torch.Tensor) or u.dim() != 4 or not u.is_floating_point():
        raise ValueError(f"u must be a floating-point tensor [B, C, H, W], got {_describe(u)}")
    _check_unit(unit, u.shape[1])
    B, _, H, W = u.shape
    if not isinstance(active, torch.Tensor) or active.dtype != torch.bool or tuple(active.shape) != (B, H, W):
        raise ValueError(
            f"active must be a bool tensor of shape [{B}, {H}, {W}] (as u), got {_describe(active)}"
        )
    if active.device != u.device:
        raise ValueError(f"active is on device {active.device} but u is on {u.device}")


def _check_unit(unit: nn.Module, channels: int) -> None:
    """Raise ``ValueError`` unless ``unit`` is a stride-1 unit ``channels → channels`` in eval mode."""
    if (unit.c_in, unit.c_out, unit.stride) != (channels, channels, 1):
        raise ValueError(
            f"unit must map {channels} channels to {channels} with stride 1 to update u in place, "
            f"got c_in={unit.c_in}, c_out={unit.c_out}, stride={unit.stride}"
        )
    if unit.training:
        raise ValueError("unit must be in eval mode (BatchNorm with running statistics): call unit.eval()")


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {list(x.shape)}"
    return f"{type(x).__name__} {x!r}"


# ------------------------------------------------------------------------------------ dense reference


@torch.no_grad()
def masked_residual_(unit: nn.Module, u: torch.Tensor, active: torch.Tensor) -> None:
    """SACT's frozen update, in place: ``u += active[:, None] * unit.residual(u)`` (residual everywhere).

    :param unit: a stride-1 :class:`~pact_pyro.nn.PreActUnit` with ``C`` channels, in eval mode.
    :param u: block state ``[B, C, H, W]`` (any memory format); updated in place.
    :param active: bool ``[B, H, W]``, the positions that run this unit.
    """
    _check(unit, u, active)
    u.add_(active[:, None].to(u.dtype) * unit.residual(u))


# ------------------------------------------------------------------------------------ folded weights


@dataclass(frozen=True)
class _Folded:
    """A unit's eval-mode parameters for the gather path (``C_in = C_out = C``).

    ``s1, b1 [C]``: bn1 as ``a = act(u·s1 + b1)``; ``w1 [9·C, C]``: conv1 with bn2's scale folded in, rows
    ordered ``(ky, kx, c_in)``; ``b2 [C]``: bn2's shift; ``w2 [9·C, C]``: conv2; ``bias2 [C] | None``: conv2's
    bias; ``slope``: the leaky ReLU's negative slope.
    """

    key: tuple
    s1: torch.Tensor
    b1: torch.Tensor
    w1: torch.Tensor
    b2: torch.Tensor
    w2: torch.Tensor
    bias2: torch.Tensor | None
    slope: float


_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``x·scale + shift`` (``[C]`` each)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("the unit's BatchNorm must track running statistics for eval-mode folding")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _slope(act: nn.Module) -> float:
    if isinstance(act, nn.LeakyReLU):
        return float(act.negative_slope)
    if isinstance(act, nn.ReLU):
        return 0.0
    raise ValueError(
        f"unit.act must be nn.LeakyReLU or nn.ReLU for the sparse path, got {type(act).__name__}"
    )


def _check_conv(conv: nn.Conv2d, name: str) -> None:
    geometry = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode)
    if geometry != ((3, 3), (1, 1), (1, 1), (1, 1), 1, "zeros"):
        raise ValueError(f"unit.{name} must be a 3x3 convolution with stride 1, zero padding 1, no groups")


def _folded(unit: nn.Module) -> _Folded:
    """The unit's folded parameters, cached until a parameter or BatchNorm buffer changes (in-place updates
    bump a tensor's version; replacing it changes its identity)."""
    bn1, conv1, bn2, conv2 = unit.bn1, unit.conv1, unit.bn2, unit.conv2
    tensors = (bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var, conv1.weight, conv1.bias)
    tensors += (bn2.weight, bn2.bias, bn2.running_mean, bn2.running_var, conv2.weight, conv2.bias)
    key = (*(None if t is None else (id(t), t._version) for t in tensors), bn1.eps, bn2.eps, _slope(unit.act))
    hit = _FOLDED.get(unit)
    if hit is not None and hit.key == key:
        return hit
    _check_conv(unit.conv1, "conv1")
    _check_conv(unit.conv2, "conv2")
    with torch.no_grad():
        s1, b1 = _bn_affine(unit.bn1)
        s2, b2 = _bn_affine(unit.bn2)
        if unit.conv1.bias is not None:
            b2 = b2 + unit.conv1.bias * s2
        c_in, c_out = unit.conv1.in_channels, unit.conv1.out_channels
        w1 = unit.conv1.weight.permute(2, 3, 1, 0).reshape(9 * c_in, c_out) * s2
        w2 = unit.conv2.weight.permute(2, 3, 1, 0).reshape(9 * c_out, c_out)
        bias2 = None if unit.conv2.bias is None else unit.conv2.bias.detach().clone()
        folded = _Folded(key, s1, b1, w1.contiguous(), b2, w2.contiguous(), bias2, _slope(unit.act))
    _FOLDED[unit] = folded
    return folded


# ----------------------------------------------------------------------------------- index planning


@dataclass(frozen=True)
class _Geometry:
    """Constant index tensors of a ``[B, H, W]`` grid (cached per shape and device).

    ``pad_of2 [2·B·H·W]``: the row of position ``p = b·H·W + y·W + x`` in the zero-bordered grid
    ``[B·(H+2)·(W+2)]``, at ``p`` and again at ``B·H·W + p``; ``offsets9 [9]``: the row offsets of the 3×3
    neighbours in ``(ky, kx)`` order; ``offsets3 [3]``: the row offsets of the left neighbours in the rows
    above, at and below (the start of each ``(ky, 0..2)`` triple); ``ranks [B·H·W]``: ``1, 2, …, B·H·W``.
    """

    pad_of2: torch.Tensor
    offsets9: torch.Tensor
    offsets3: torch.Tensor
    ranks: torch.Tensor


_GEOMETRY: dict[tuple, _Geometry] = {}


def _geometry(B: int, H: int, W: int, device: torch.device) -> _Geometry:
    key = (B, H, W, str(device))
    hit = _GEOMETRY.get(key)
    if hit is None:
        pad_of = torch.arange(B * (H + 2) * (W + 2), device=device).view(B, H + 2, W + 2)[:, 1:-1, 1:-1]
        offsets9 = torch.tensor([dy * (W + 2) + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)], device=device)
        offsets3 = torch.tensor([dy * (W + 2) - 1 for dy in (-1, 0, 1)], device=device)
        ranks = torch.arange(1, B * H * W + 1, device=device)
        if len(_GEOMETRY) > 64:
            _GEOMETRY.clear()
        hit = _GEOMETRY[key] = _Geometry(pad_of.reshape(-1).repeat(2), offsets9, offsets3, ranks)
    return hit


@dataclass
class _BlockPlan:
    """Index tensors of every unit ``l = 2..L`` of a block, from the unit counts ``N [B, H, W]``.

    The positions are sorted by ``N`` (descending, stable): the active set of unit ``l``, ``A_l = {N ≥ l}``,
    is a prefix of that order; likewise ``D_l = {maxpool3x3(N) ≥ l}`` (the 3×3 dilation of ``A_l``) is a
    prefix of the order by ``maxpool3x3(N)``. So one plan serves every unit, by slicing.

    * ``pos_a [B·H·W]``: rows of ``A``-ordered positions in the flat grid (for adding into ``u``);
    * ``nbr_d [B·H·W·3]``: for the ``D``-ordered positions (conv1's input), the rows in the zero-bordered
      grid ``[B·(H+2)·(W+2)]`` of their upper-left, left and lower-left neighbours: each starts a horizontal
      triple of neighbours, contiguous in channels-last memory (:attr:`_Buffers.a3`);
    * ``nbr_a [B·H·W·9]``: rows of the neighbours of the ``A``-ordered positions in the compact buffer of
      ``t`` (row 0: zeros, for neighbours outside the image; row ``1 + k``: the ``k``-th position of ``D``);
      every neighbour of ``A_l`` inside the image lies in ``D_l``, a prefix, so these rows are valid for
      every unit;
    * ``count_a[l] = |A_l|``, ``count_d[l] = |D_l|`` for ``l = 0..L``.
    """

    pos_a: torch.Tensor
    nbr_a: torch.Tensor
    nbr_d: torch.Tensor
    count_a: list[int]
    count_d: list[int]

    @classmethod
    def build(cls, units_map: torch.Tensor, L: int) -> _BlockPlan:
        B, H, W = units_map.shape
        n = B * H * W
        geo = _geometry(B, H, W, units_map.device)
        # sort keys, one 1-D array: N + L + 1 (A order first), then maxpool3x3(N) (D order); N ≤ L is exact
        # in float32, and the histogram of the keys gives both rows' counts
        nf = units_map[:, None].to(torch.float32)
        nd = F.max_pool2d(nf, 3, 1, 1)
        key = torch.cat([nf.reshape(-1) + (L + 1), nd.reshape(-1)]).to(torch.int32)  # [2n], in 0..2L+1
        order = torch.argsort(key, descending=True, stable=True)  # [:n] in [0, n), [n:] in [n, 2n)
        hist = torch.bincount(key, minlength=2 * L + 2).tolist()
        count_d = list(accumulate(reversed(hist[: L + 1])))[::-1]  # count_d[l] = #{maxpool(N) ≥ l}
        count_a = list(accumulate(reversed(hist[L + 1 :])))[::-1]
        pad = geo.pad_of2.index_select(0, order)  # [2n] zero-bordered rows: A order, then D order
        nbr_a = (pad[:n, None] + geo.offsets9).view(-1)  # [9n]
        nbr_d = (pad[n:, None] + geo.offsets3).view(-1)  # [3n]
        # compact row of t for each zero-bordered row: 1 + rank in the D order, 0 elsewhere (the border)
        compact = torch.zeros(B * (H + 2) * (W + 2), dtype=torch.int64, device=units_map.device)
        compact.index_copy_(0, pad[n:], geo.ranks)
        return cls(order[:n], compact.index_select(0, nbr_a), nbr_d, count_a, count_d)


class _Buffers:
    """Scratch rows of one block: ``a`` ``[B·(H+2)·(W+2), C]``, channels-last and zero-bordered (only its
    interior is ever written), and ``t`` ``[1 + B·H·W, C]`` (row 0 stays zero; rows ``1..|D|`` hold ``t`` at
    ``D`` for the current unit).

    ``a3 [B·(H+2)·(W+2) - 2, 3·C]`` is an overlapping view of ``a``: row ``r`` is rows ``r, r+1, r+2``, i.e. a
    horizontal triple of neighbours; gathering 3 triples per position instead of 9 rows is ~1.2–2x faster.
    """

    def __init__(self, B: int, C: int, H: int, W: int, like: torch.Tensor) -> None:
        self.a = torch.zeros(B * (H + 2) * (W + 2), C, dtype=like.dtype, device=like.device)
        self.a_interior = self.a.view(B, H + 2, W + 2, C)[:, 1:-1, 1:-1]  # [B, H, W, C]
        self.a3 = self.a.as_strided((self.a.shape[0] - 2, 3 * C), (C, 1))
        self.t = torch.zeros(1 + B * H * W, C, dtype=like.dtype, device=like.device)


# ------------------------------------------------------------------------------------- sparse paths

#: Gathered rows are processed in chunks of about this many bytes (they stay in the CPU's L2 cache between
#: the gather and the matmul); a chunk is one ``index_select`` and one ``addmm``.
CHUNK_BYTES = 1 << 20


def _conv_rows(
    src: torch.Tensor, nbr: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
) -> None:
    """A 3×3 convolution at ``P`` positions: ``out[i] = bias + concat_k src[nbr[taps·i + k]] @ w``.

    ``src [R, K / taps]`` rows (9 neighbours of ``C_in`` channels, or 3 triples of ``3·C_in``),
    ``nbr [taps·P]`` int64, ``w [K = 9·C_in, C_out]``, ``bias [C_out] | None``, ``out [P, C_out]`` (written in
    place).
    """
    P, K = out.shape[0], w.shape[0]
    taps = K // src.shape[1]
    chunk = max(1, CHUNK_BYTES // (K * src.element_size()))
    if P <= chunk:  # batch 1: one gather, one matmul
        _matmul(src.index_select(0, nbr).view(P, K), w, bias, out)
        return
    scratch = src.new_empty(taps * chunk, src.shape[1])
    for i in range(0, P, chunk):
        n = min(chunk, P - i)
        rows = torch.index_select(src, 0, nbr[taps * i : taps * (i + n)], out=scratch[: taps * n])
        _matmul(rows.view(n, K), w, bias, out[i : i + n])


def _matmul(rows: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """``out = bias + rows @ w`` in place."""
    if bias is None:
        torch.mm(rows, w, out=out)
    else:
        torch.addmm(bias, rows, w, out=out)


def _gather_update(f: _Folded, u: torch.Tensor, buf: _Buffers, plan: _BlockPlan, l: int) -> None:
    """``u += residual`` at the active positions of unit ``l`` of ``plan``, by gather + matmul.

    ``u [B, C, H, W]`` (contiguous or channels-last), ``buf`` the block's scratch rows.
    """
    B, C, H, W = u.shape
    n_a, n_d = plan.count_a[l], plan.count_d[l]
    u_rows = u.permute(0, 2, 3, 1)  # [B, H, W, C], a view
    # a = act(bn1(u)) into the interior of the zero-bordered buffer (every position: 2 cheap ops)
    torch.addcmul(f.b1, u_rows, f.s1, out=buf.a_interior)
    F.leaky_relu_(buf.a_interior, f.slope)
    # t = act(bn2(conv1(a))) at D, into rows 1..|D| of the compact buffer
    t = buf.t[1 : 1 + n_d]
    _conv_rows(buf.a3, plan.nbr_d[: 3 * n_d], f.w1, f.b2, t)
    F.leaky_relu_(t, f.slope)
    # conv2 at A, added into u
    r = u.new_empty(n_a, C)
    _conv_rows(buf.t, plan.nbr_a[: 9 * n_a], f.w2, f.bias2, r)
    pos_a = plan.pos_a[:n_a]
    if u_rows.is_contiguous():  # channels-last u: its rows are a [B·H·W, C] view
        u_rows.view(-1, C).index_add_(0, pos_a, r)
    else:  # any other layout (e.g. contiguous NCHW): index the [B, H, W, C] view
        yx = pos_a % (H * W)
        u_rows.index_put_((pos_a // (H * W), yx // W, yx % W), r, accumulate=True)


def _crop_update(unit: nn.Module, u: torch.Tensor, active: torch.Tensor) -> None:
    """``u += active · residual`` on the union bounding box of ``active`` over the batch: the dense unit runs
    on the box grown by 2 pixels (real neighbours inside the image, the convolutions' own zero padding at
    the image border), and its output inside the box is exact."""
    H, W = active.shape[1:]
    rows = active.any(2).any(0).nonzero()
    if rows.numel() == 0:
        return
    cols = active.any(1).any(0).nonzero()
    y0, y1, x0, x1 = (int(v) for v in (rows[0], rows[-1], cols[0], cols[-1]))
    Y0, Y1, X0, X1 = max(y0 - 2, 0), min(y1 + 2, H - 1), max(x0 - 2, 0), min(x1 + 2, W - 1)
    r = unit.residual(u[:, :, Y0 : Y1 + 1, X0 : X1 + 1])[:, :, y0 - Y0 : y1 - Y0 + 1, x0 - X0 : x1 - X0 + 1]
    box = active[:, None, y0 : y1 + 1, x0 : x1 + 1].to(u.dtype)
    u[:, :, y0 : y1 + 1, x0 : x1 + 1].add_(box * r)


def _use_dense(n_d: int, positions: int) -> bool:
    """The ``"auto"`` rule: dense masked evaluation for ``|D| = n_d`` of ``B·H·W = positions``."""
    return positions > DENSE_MIN_POSITIONS and n_d > DENSE_ABOVE * positions


@torch.no_grad()
def sparse_residual_(unit: nn.Module, u: torch.Tensor, active: torch.Tensor, strategy: str = "auto") -> None:
    """The update of :func:`masked_residual_`, computed only where needed; in place, touching only the
    active positions of ``u`` (the others stay bit-identical).

    :param unit: a stride-1 :class:`~pact_pyro.nn.PreActUnit` with ``C`` channels, in eval mode.
    :param u: block state ``[B, C, H, W]``, contiguous or channels-last; updated in place.
    :param active: bool ``[B, H, W]``, the positions that run this unit.
    :param strategy: ``"auto"`` (gather, or dense above :data:`DENSE_ABOVE`), ``"gather"``, ``"crop"`` or
        ``"dense"``; see the module docstring.
    """
    _check(unit, u, active)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "dense":
        masked_residual_(unit, u, active)
        return
    if strategy == "crop":
        _crop_update(unit, u, active)
        return
    B, C, H, W = u.shape
    plan = _BlockPlan.build(active.to(torch.int64) + 1, 2)  # N = 2 where active: A_2 = active
    if plan.count_a[2] == 0:
        return
    if strategy == "auto" and _use_dense(plan.count_d[2], B * H * W):
        masked_residual_(unit, u, active)
        return
    _gather_update(_folded(unit), u, _Buffers(B, C, H, W, u), plan, 2)


# ------------------------------------------------------------------------------------------- FLOPs


def _dilated(active: torch.Tensor) -> torch.Tensor:
    """The 3×3 dilation of a bool mask ``[B, H, W]`` (clipped to the image)."""
    return F.max_pool2d(active[:, None].float(), 3, 1, 1)[:, 0] > 0


def sparse_conv_flops(unit: nn.Module, active: torch.Tensor) -> int:
    """FLOPs of the unit at the mask ``active`` (bool ``[B, H, W]``) by SACT's rules, summed over the batch:
    ``2·|A|·C_out·9·C_out`` for conv2 at the active positions plus ``2·|D|·C_out·9·C_in`` for conv1 at their
    3×3 dilation ``D``."""
    if not isinstance(active, torch.Tensor) or active.dtype != torch.bool or active.dim() != 3:
        raise ValueError(f"active must be a bool tensor of shape [B, H, W], got {_describe(active)}")
    n_a, n_d = int(active.sum()), int(_dilated(active).sum())
    return 2 * 9 * unit.c_out * (n_a * unit.c_out + n_d * unit.c_in)


# ----------------------------------------------------------------------------------- network level


def _check_units_map(units_map: torch.Tensor, u: torch.Tensor, L: int) -> None:
    B, _, H, W = u.shape
    if (
        not isinstance(units_map, torch.Tensor)
        or units_map.dtype != torch.int64
        or tuple(units_map.shape) != (B, H, W)
    ):
        raise ValueError(
            f"units_map must be an int64 tensor of shape [{B}, {H}, {W}], got {_describe(units_map)}"
        )
    if units_map.device != u.device:
        raise ValueError(f"units_map is on device {units_map.device} but the block state is on {u.device}")
    lo, hi = torch.aminmax(units_map)
    lo, hi = int(lo), int(hi)
    if lo < 1 or hi > L:
        raise ValueError(f"units_map must lie in 1..{L} (units of the block), got values {lo}..{hi}")


@torch.no_grad()
def run_block_frozen(
    block: nn.ModuleList, u: torch.Tensor, units_map: torch.Tensor, sparse: bool = True
) -> torch.Tensor:
    """One block with spatial halting: unit 1 runs densely everywhere; unit ``l ≥ 2`` updates the positions
    with ``units_map ≥ l`` and leaves the others frozen.

    :param block: the block's units (eval mode); unit 1 may downsample, the others have stride 1.
    :param u: the block's input ``[B, C_in, H_in, W_in]``; not modified.
    :param units_map: int64 ``[B, H, W]`` (``H, W``: the block's resolution after unit 1), the number of units
        ``N(i, j) ∈ 1..L`` each position runs.
    :param sparse: ``False``: SACT's dense masked updates (:func:`masked_residual_`, every unit computed
        everywhere); ``True``: the sparse path (index tensors of all units computed once, per-unit choice
        between gather and dense by :data:`DENSE_ABOVE`, units with no active position skipped).
        Both give the same values within float rounding, and leave halted positions bit-identical.
    :returns: the block's output ``[B, C, H, W]`` (channels-last memory format when ``sparse``).
    """
    L = len(block)
    u = block[0](u)
    _check_units_map(units_map, u, L)
    if not sparse:
        for l in range(2, L + 1):
            masked_residual_(block[l - 1], u, units_map >= l)
        return u
    B, C, H, W = u.shape
    u = u.contiguous(memory_format=torch.channels_last)
    plan = _BlockPlan.build(units_map, L)
    buf = None
    for l in range(2, L + 1):
        unit = block[l - 1]
        if plan.count_a[l] == 0:
            break  # the active sets are nested: no later unit runs either
        if _use_dense(plan.count_d[l], B * H * W):
            masked_residual_(unit, u, units_map >= l)
            continue
        _check_unit(unit, C)
        buf = buf if buf is not None else _Buffers(B, C, H, W, u)
        _gather_update(_folded(unit), u, buf, plan, l)
    return u


@torch.no_grad()
def frozen_forward(
    backbone: nn.Module, x: torch.Tensor, units_maps: list[torch.Tensor], sparse: bool = True
) -> torch.Tensor:
    """A :class:`~pact_pyro.nn.ResNetBackbone` (eval mode) with spatial halting: stem, every block by
    :func:`run_block_frozen` with ``units_maps[b]`` (int64 ``[B, H_b, W_b]``), classifier.

    :param x: images ``[B, C_in, H, W]``. :returns: logits ``[B, classes]``.
    """
    if len(units_maps) != len(backbone.blocks):
        raise ValueError(
            f"units_maps must hold one map per block ({len(backbone.blocks)}), got {len(units_maps)}"
        )
    u = backbone.stem(x)
    for block, units_map in zip(backbone.blocks, units_maps, strict=True):
        u = run_block_frozen(block, u, units_map, sparse)
    return backbone.classifier(u)


def _conv_flops(conv: nn.Conv2d, H_out: int, W_out: int) -> int:
    """FLOPs of a convolution at one example's ``H_out × W_out`` output (2 per multiply-add)."""
    kh, kw = conv.kernel_size
    return 2 * H_out * W_out * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw


def frozen_flops(backbone: nn.Module, x: torch.Tensor, units_maps: list[torch.Tensor]) -> tuple[int, int]:
    """``(dense, sparse)`` FLOPs of :func:`frozen_forward` on ``x`` ``[B, C_in, H, W]`` by SACT's rules (as
    :class:`~pact_pyro.flops.FlopTable` counts them: convolutions and linear layers), summed over the batch.

    ``dense`` runs every unit everywhere (the masked path); ``sparse`` counts the stem, unit 1 of each block
    and the classifier in full and unit ``l ≥ 2`` by :func:`sparse_conv_flops` at ``units_map ≥ l``.
    """
    B, _, H, W = x.shape
    head = _conv_flops(backbone.stem, H, W)
    head += sum(
        2 * m.in_features * m.out_features for m in backbone.classifier.modules() if isinstance(m, nn.Linear)
    )
    dense = sparse = B * head
    for block, units_map in zip(backbone.blocks, units_maps, strict=True):
        Hb, Wb = units_map.shape[1:]
        unit_flops = [_conv_flops(unit.conv1, Hb, Wb) + _conv_flops(unit.conv2, Hb, Wb) for unit in block]
        dense += B * sum(unit_flops)
        sparse += B * unit_flops[0]
        for l in range(2, len(block) + 1):
            sparse += sparse_conv_flops(block[l - 1], units_map >= l)
    return dense, sparse
