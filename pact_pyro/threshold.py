"""Test-time evaluation of a trained PACT network with real early exit (pact-notes.md §4).

Deterministic rule: in each block run units in order; after unit ``l < L`` compute ``h^l = σ(head_l(u^l))``
and stop at the first ``h^l ≥ threshold`` (0.5: the mode of each ``q(z^l | x)``), else after unit ``L``.
The block returns the current state ``u^N``: no weighted accumulator (ACT keeps one), so only one
activation tensor per block is live.

Early exit at any batch size (:class:`~pact_pyro.early_exit.RunningRows`): within a block the running
examples are the leading rows of ``u``; when some halt they swap rows with running ones behind them, so each
unit runs on the view ``u[:k]`` of the ``k`` still-running examples and adds its residual into it in place:
compute follows the per-example decisions instead of waiting for the whole batch, with no gathered copy
next to the state (peak activation memory = the plain full forward's; with ``chunk_size``, about one block
state). Rows stay permuted across blocks; logits and unit counts come back in example order.
``mode="sample"`` draws ``z^l ~ Bernoulli(h^l)`` instead (the hard value of the Concrete sample, for any
temperature).

Batch 1 (dispatch-bound) takes a scalar path with the same decisions. Importing this module registers three
global ``torch.nn`` registration hooks (module, parameter, buffer), which only bump a counter: it
invalidates the cached module and tensor lists used to check training flags and folded heads cheaply.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import NamedTuple

import torch

from .early_exit import RunningRows, check_chunk_size
from .flops import FlopTable

__all__ = ["ThresholdResult", "threshold", "evaluate_masked"]


class ThresholdResult(NamedTuple):
    """``logits [B, C]``, ``units [B, blocks]`` (1-based ``N_b``), ``flops [B]`` (SACT rules).

    Spatial models: ``units`` is the mean over positions (float64) and ``maps`` holds, per block, the units
    run at each position (int64 ``[B, H_b, W_b]``); ``None`` otherwise."""

    logits: torch.Tensor
    units: torch.Tensor
    flops: torch.Tensor
    maps: list[torch.Tensor] | None = None


@functools.lru_cache(maxsize=64)
def _logit_threshold(threshold: float, dtype: torch.dtype) -> float:
    """``logit(t) = log t - log(1 - t)`` rounded to ``dtype`` (``+inf`` at ``t = 1``): ``h ≥ t`` is decided
    as ``logit h ≥ logit(t)`` — the same rule without the sigmoid's rounding (in float32 ``σ(x)`` rounds to
    0.5 for ``|x| < 3e-8`` and to 1 for ``x > 17``), and the same comparison on the scalar batch-1 path."""
    t = float(threshold)
    if t >= 1.0:
        return math.inf
    return float(torch.tensor(math.log(t) - math.log1p(-t), dtype=dtype))


def _decide(
    logits: torch.Tensor, threshold: float, mode: str, generator: torch.Generator | None
) -> torch.Tensor:
    if mode == "threshold":
        return logits >= _logit_threshold(threshold, logits.dtype)
    h = torch.sigmoid(logits)
    return torch.rand(h.shape, generator=generator, device=h.device, dtype=h.dtype) < h


# bumped whenever any nn.Module anywhere registers a submodule, parameter or buffer (global torch hooks):
# cached module and tensor lists below are rebuilt when it changed
_STRUCTURE = [0]
_FLAT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _bump_structure(*args):
    _STRUCTURE[0] += 1


torch.nn.modules.module.register_module_module_registration_hook(_bump_structure)
torch.nn.modules.module.register_module_parameter_registration_hook(_bump_structure)
torch.nn.modules.module.register_module_buffer_registration_hook(_bump_structure)


def _submodules(module: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """``tuple(module.modules())``, cached per root and rebuilt whenever any module anywhere registers a
    submodule (so it stays exact; ``.modules()`` walks the tree in Python at every call). The cache holds
    the descendants only: a value that referenced its weak key would keep the root alive forever."""
    cached = _FLAT.get(module)
    if cached is None or cached[0] != _STRUCTURE[0]:
        cached = _FLAT[module] = (_STRUCTURE[0], tuple(module.modules())[1:])
    return (module, *cached[1])


def _training_flags(*roots: torch.nn.Module) -> list[tuple[torch.nn.Module, bool]]:
    """Every submodule's training flag when any of them is in training mode, else ``[]``: what
    :func:`threshold` restores after evaluating in eval mode (a few µs when everything is in eval mode)."""
    mods = [m for r in roots for m in _submodules(r)]
    for m in mods:
        if m.training:
            return [(m, m.training) for m in mods]
    return []


_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _head_logits(guide):
    """``f(b, l, u) = logit h_b^{l+1}`` for thresholding: ``guide.halting_logits``, or, for the stock SACT
    heads (:class:`~pact_pyro.nn.HaltingHead`: eval BatchNorm1d then Linear, on ``mean_hw(u)``), the same
    affine map folded into one ``addmv`` over ``u`` flattened, ``logit = Σ_{c,h,w} u_{chw} a_c / (HW) + c₀``,
    with ``a = W γ / sqrt(σ² + ε)`` and ``c₀ = b + W (β - γ μ / sqrt(σ² + ε))``. One op instead of ~8 per head
    (a batch-1 call is dispatch-bound); equal up to float rounding. The folding is cached per guide and redone
    whenever a head tensor changes (data pointer or version counter).
    """
    from pact_pyro.guides.halting_guide import HaltingGuide
    from pact_pyro.nn import HaltingHead

    if type(guide).halting_logits is not HaltingGuide.halting_logits:
        return guide.halting_logits
    cached = _FOLDED.get(guide)
    if cached is None or cached[0] != _STRUCTURE[0]:  # first call, or modules/tensors (re)registered
        heads = [h for hb in guide.heads for h in hb]
        stock = all(type(h) is HaltingHead and h.bn.affine and h.bn.running_var is not None for h in heads)
        pairs = [[(h.bn, h.linear) for h in hb] for hb in guide.heads] if stock else None
        fields = ("weight", "bias", "running_mean", "running_var")
        tensors = [
            t
            for pb in pairs or []
            for bn, lin in pb
            for t in (*(getattr(bn, f) for f in fields), lin.weight, lin.bias)
        ]
        cached = _FOLDED[guide] = (_STRUCTURE[0], pairs, tensors, None, None)
    structure, pairs, tensors, key, folded = cached
    if pairs is None:
        return guide.halting_logits
    # the fold is stale once any head tensor changed: in place (optimizer step, load_state_dict: version
    # counter) or replaced (.to(), .data =: data pointer); a new module or tensor attribute bumps _STRUCTURE
    now = [t._version for t in tensors] + [t.data_ptr() for t in tensors]
    if now != key:
        folded = []
        for pb in pairs:
            folded.append([])
            for bn, lin in pb:
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                a = lin.weight[0] * scale
                c = lin.bias + lin.weight[0] @ (bn.bias - bn.running_mean * scale)
                folded[-1].append((a, c, {}))
        _FOLDED[guide] = (structure, pairs, tensors, now, folded)

    def logits(b: int, l: int, u: torch.Tensor) -> torch.Tensor:
        a, c, per_shape = folded[b][l]
        hw = u.shape[2] * u.shape[3]
        # a channels-last state is read as [k, H·W·C] (a view: reshape would copy), the weight in that order
        nhwc = not u.is_contiguous() and u.is_contiguous(memory_format=torch.channels_last)
        wc = per_shape.get((hw, u.dtype, nhwc))
        if wc is None:
            w = (a / hw).repeat(hw) if nhwc else (a / hw).repeat_interleave(hw)
            wc = per_shape[hw, u.dtype, nhwc] = (w.to(u.dtype), c.to(u.dtype))
        flat = u.permute(0, 2, 3, 1).reshape(u.shape[0], -1) if nhwc else u.reshape(u.shape[0], -1)
        return torch.addmv(wc[1], flat, wc[0])

    return logits


def _check_mode(threshold: float, mode: str) -> None:
    if mode not in ("threshold", "sample"):
        raise ValueError(f"mode must be 'threshold' or 'sample', got {mode!r}")
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")


@torch.no_grad()
def threshold(
    model,
    guide,
    x: torch.Tensor,
    threshold: float = 0.5,
    mode: str = "threshold",
    generator: torch.Generator | None = None,
    flop_table: FlopTable | None = None,
    chunk_size: int | None = None,
) -> ThresholdResult:
    """Evaluate ``x`` ``[B, C, H, W]`` with per-example early exit; see the module docstring.

    ``chunk_size``: run every unit on at most this many examples at a time, adding into the state in place
    (:mod:`pact_pyro.early_exit`): activation memory ≈ one block state ``[B, C, H, W]`` plus the transients
    of ``chunk_size`` examples. ``None`` (default) runs all running examples at once (fastest).

    ``model``/``guide`` are put in eval mode for the call (BatchNorm uses running statistics) and restored.
    ``threshold = 1.0`` runs every unit (``logit h ≥ +inf`` never holds).

    Models with their own test-time rule (ACT-ResNet, plain ResNet) provide
    ``model.evaluate_batch(x, threshold, mode, generator, flop_table)``, which is used instead (with
    ``chunk_size=`` as a keyword when one is given). Spatial PACT models (``model.spatial_halting``) go to
    :func:`~pact_pyro.spatial_evaluate.spatial_threshold`.
    """
    _check_mode(threshold, mode)
    check_chunk_size(chunk_size)
    if getattr(model, "spatial_halting", False) and not hasattr(model, "evaluate_batch"):
        from .spatial_evaluate import spatial_threshold

        return spatial_threshold(model, guide, x, threshold, mode, generator, flop_table, chunk_size)
    if hasattr(model, "evaluate_batch"):
        if chunk_size is None:
            return model.evaluate_batch(x, threshold, mode, generator, flop_table)
        return model.evaluate_batch(x, threshold, mode, generator, flop_table, chunk_size=chunk_size)
    net = model.backbone
    net.check_input(x)
    # .eval()/.train() walk every submodule in Python (~1.5 ms for ResNet-32, a third of a batch-1 call): set
    # the flags on the cached module list instead, and only when some module is in training mode
    flags = _training_flags(net, guide)
    for m, _ in flags:
        m.training = False
    try:
        B = x.shape[0]
        dev = x.device
        head_logits = _head_logits(guide)
        if B == 1:  # dispatch-bound: decisions and unit counts as Python scalars, no bookkeeping tensors
            return _threshold_one(model, guide, net, x, head_logits, threshold, mode, generator, flop_table)
        units = torch.empty(B, len(net.blocks), dtype=torch.int64, device=dev)
        rows = RunningRows(net.stem(x), chunk_size)
        for b, block in enumerate(net.blocks):
            rows.start_block(block[0])  # every example runs unit 1
            L = len(block)
            for l in range(1, L):
                # a head's output is [k] and it makes no state-sized temporary: no chunking needed
                stop = _decide(head_logits(b, l - 1, rows.running), threshold, mode, generator)
                if bool(stop.any()):
                    units[rows.halt(stop), b] = l
                    if rows.k == 0:
                        break
                rows.run(block[l])
            if rows.k:
                units[rows.examples(slice(0, rows.k)), b] = L
        logits = rows.to_examples(rows.map(net.classifier))
    finally:
        for m, was in flags:
            m.training = was
    table = flop_table or FlopTable.for_model(model, x.shape[1:], guide)
    return ThresholdResult(logits, units, table.flops(units))


def _threshold_one(model, guide, net, x, head_logits, threshold, mode, generator, flop_table):
    """:func:`threshold` for one example (``x [1, C, H, W]``): the same rule (:func:`_decide`), with unit
    counts and FLOPs as Python ints instead of bookkeeping tensors."""
    u = net.stem(x)
    units = []
    lt = _logit_threshold(threshold, x.dtype) if mode == "threshold" else None
    for b, block in enumerate(net.blocks):
        L = n = len(block)
        for l in range(L):
            u = block[l](u)
            if l == L - 1:
                break
            logit = head_logits(b, l, u)
            # threshold mode: _decide's comparison (logit >= logit(t), exact in x.dtype) on a Python float
            stop = float(logit) >= lt if lt is not None else bool(_decide(logit, threshold, mode, generator))
            if stop:
                n = l + 1
                break
        units.append(n)
    logits = net.classifier(u)
    table = flop_table or FlopTable.for_model(model, x.shape[1:], guide)
    dev = x.device
    return ThresholdResult(
        logits, torch.tensor([units], device=dev), torch.tensor([table.flops_of(units)], device=dev)
    )


@torch.no_grad()
def evaluate_masked(model, guide, x: torch.Tensor, units: torch.Tensor | None = None, threshold: float = 0.5):
    """Reference path without early exit: run *every* unit of every example, compute every ``h``, decide
    ``N = threshold_units(h)`` (or use the given ``units [B, blocks]``) and select ``u^N`` by masking.
    Returns ``(logits [B, C], units [B, blocks])``. Used to test :func:`threshold`.
    """
    from .halting import stick_breaking, threshold_units, units_to_z

    net = model.backbone
    was = net.training, guide.training
    net.eval()
    guide.eval()
    try:
        u = net.stem(x)
        decided = []
        for b, block in enumerate(net.blocks):
            states, hs = [], []
            for l, unit in enumerate(block):
                u = unit(u)
                states.append(u)
                if l < len(block) - 1:
                    hs.append(torch.sigmoid(guide.halting_logits(b, l, u)))
            h = torch.stack(hs, -1) if hs else u.new_zeros(u.shape[0], 0)
            n = threshold_units(h, threshold) if units is None else units[:, b]
            w = stick_breaking(units_to_z(n, len(block), dtype=u.dtype))  # one-hot at N
            u = (torch.stack(states, 1) * w.reshape(w.shape + (1, 1, 1))).sum(1)
            decided.append(n)
        logits = net.classifier(u)
    finally:
        net.train(was[0])
        guide.train(was[1])
    return logits, torch.stack(decided, -1)
