"""Sparse evaluation of residual units at active positions (pact_pyro.spatial_sparse): equal to SACT's dense
masked update, halted positions untouched, FLOPs by SACT's rules, the network-level loop, the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from pact_pyro.nn import PreActUnit, ResNetBackbone
from pact_pyro.spatial_sparse import (
    frozen_flops,
    frozen_forward,
    masked_residual_,
    run_block_frozen,
    sparse_conv_flops,
    sparse_residual_,
)

ROOT = Path(__file__).resolve().parents[1]
MASKS = ("empty", "pixel", "corner", "blob", "random30", "full")
TOL = {"atol": 1e-5, "rtol": 1e-5}


def randomise_bn(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial eval-mode BatchNorm: random running statistics and affine parameters."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
                m.weight.copy_(torch.randn(c, generator=gen))
                m.bias.copy_(torch.randn(c, generator=gen))


def make_unit(C: int, dtype=torch.float32, seed: int = 0) -> PreActUnit:
    gen = torch.Generator().manual_seed(seed)
    unit = PreActUnit(C, C)
    randomise_bn(unit, gen)
    return unit.eval().to(dtype)


def make_mask(kind: str, B: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    m = torch.zeros(B, H, W, dtype=torch.bool)
    if kind == "pixel":
        m[:, H // 2, W // 3] = True
    elif kind == "corner":  # touches the image border: the zero padding matters
        m[:, : H // 4, W - W // 4 :] = True
    elif kind == "blob":
        field = F.interpolate(torch.randn(B, 1, 3, 3, generator=gen), size=(H, W), mode="bicubic")[:, 0]
        m = field > field.flatten(1).median(1).values[:, None, None]
    elif kind == "random30":
        m = torch.rand(B, H, W, generator=gen) < 0.3
    elif kind == "full":
        m[:] = True
    return m


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize(("C", "H"), [(16, 32), (64, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_sparse_equals_masked(kind, B, C, H, channels_last):
    unit = make_unit(C, seed=C + H)
    u0 = torch.randn(B, C, H, H, generator=torch.Generator().manual_seed(B))
    if channels_last:
        u0 = u0.contiguous(memory_format=torch.channels_last)
    active = make_mask(kind, B, H, H, seed=B + C)
    ref = u0.clone()
    masked_residual_(unit, ref, active)
    for strategy in ("gather", "crop", "auto"):
        u = u0.clone()
        assert sparse_residual_(unit, u, active, strategy=strategy) is None
        torch.testing.assert_close(u, ref, **TOL, msg=lambda m, s=strategy: f"{s}: {m}")
        # halted positions are bit-identical, and the tensor keeps its memory format
        inactive = ~active
        assert torch.equal(u.permute(0, 2, 3, 1)[inactive], u0.permute(0, 2, 3, 1)[inactive])
        assert u.is_contiguous(memory_format=torch.channels_last) == channels_last
    if kind == "empty":
        assert torch.equal(ref, u0)


@pytest.mark.parametrize("kind", ["corner", "blob", "full"])
def test_float64(kind):
    unit = make_unit(16, torch.float64, seed=3)
    u0 = torch.randn(2, 16, 12, 12, dtype=torch.float64)
    active = make_mask(kind, 2, 12, 12)
    ref = u0.clone()
    masked_residual_(unit, ref, active)
    u = u0.clone()
    sparse_residual_(unit, u, active, strategy="gather")
    torch.testing.assert_close(u, ref, atol=1e-12, rtol=1e-12)
    assert torch.equal(u.permute(0, 2, 3, 1)[~active], u0.permute(0, 2, 3, 1)[~active])


def test_strided_view_is_updated_in_place():
    """u may be a view into a larger tensor: only its active positions change, nothing around it."""
    unit = make_unit(16, seed=6)
    big0 = torch.randn(2, 16, 12, 12)
    active = make_mask("blob", 2, 8, 8)
    ref = big0.clone()
    masked_residual_(unit, ref[:, :, 2:10, 3:11], active)
    big = big0.clone()
    sparse_residual_(unit, big[:, :, 2:10, 3:11], active, strategy="gather")
    torch.testing.assert_close(big, ref, **TOL)
    outside = torch.ones(2, 12, 12, dtype=torch.bool)
    outside[:, 2:10, 3:11] = ~active
    assert torch.equal(big.permute(0, 2, 3, 1)[outside], big0.permute(0, 2, 3, 1)[outside])


def test_parameter_changes_invalidate_the_folded_cache():
    unit = make_unit(16, seed=4)
    u0 = torch.randn(1, 16, 8, 8)
    active = make_mask("blob", 1, 8, 8)
    sparse_residual_(unit, u0.clone(), active, strategy="gather")  # fills the cache
    with torch.no_grad():
        unit.bn2.running_mean.add_(0.5)
        unit.conv1.weight.mul_(1.5)
    ref, u = u0.clone(), u0.clone()
    masked_residual_(unit, ref, active)
    sparse_residual_(unit, u, active, strategy="gather")
    torch.testing.assert_close(u, ref, **TOL)


def test_errors_name_the_argument():
    unit = make_unit(16)
    u = torch.randn(2, 16, 8, 8)
    with pytest.raises(ValueError, match=r"active must be a bool tensor of shape \[2, 8, 8\].*\[2, 8, 9\]"):
        sparse_residual_(unit, u, torch.ones(2, 8, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"active must be a bool tensor.*torch\.float32"):
        sparse_residual_(unit, u, torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match=r"active must be a bool tensor.*\[8, 8\]"):
        masked_residual_(unit, u, torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="strategy must be one of"):
        sparse_residual_(unit, u, torch.ones(2, 8, 8, dtype=torch.bool), strategy="fast")
    with pytest.raises(ValueError, match="u must be a floating-point tensor"):
        sparse_residual_(unit, u[0], torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="unit must map 32 channels to 32 with stride 1"):
        sparse_residual_(unit, torch.randn(1, 32, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="unit must be in eval mode"):
        sparse_residual_(unit.train(), u, torch.ones(2, 8, 8, dtype=torch.bool))


def test_flops_match_flop_counter():
    unit = make_unit(16, seed=5)
    u = torch.randn(2, 16, 10, 10)
    full = torch.ones(2, 10, 10, dtype=torch.bool)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unit.residual(u)
    assert sparse_conv_flops(unit, full) == counter.get_total_flops() == 2 * 2 * 2 * 100 * 16 * 9 * 16
    active = make_mask("corner", 2, 10, 10) | make_mask("pixel", 2, 10, 10)
    n_a = int(active.sum())
    n_d = int((F.max_pool2d(active[:, None].float(), 3, 1, 1) > 0).sum())
    assert sparse_conv_flops(unit, active) == 2 * 16 * 9 * 16 * (n_a + n_d)
    with FlopCounterMode(display=False) as counter:  # the gather path's matmuls count exactly that
        sparse_residual_(unit, u.clone(), active, strategy="gather")
    assert counter.get_total_flops() == sparse_conv_flops(unit, active)
    assert sparse_conv_flops(unit, torch.zeros_like(active)) == 0


def small_net(seed: int = 0) -> ResNetBackbone:
    torch.manual_seed(seed)
    net = ResNetBackbone([3, 3, 3], widths=(8, 16, 32))
    randomise_bn(net, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # keep activations O(1) through the random network
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.mul_(0.3)
    return net.eval()


def blob_maps(B: int, shapes, L: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    maps = []
    for H, W in shapes:
        field = F.interpolate(torch.randn(B, 1, 3, 3, generator=gen), size=(H, W), mode="bicubic")[:, 0]
        q = torch.quantile(field.flatten(1), torch.linspace(0.2, 0.9, L - 1), dim=1).T  # [B, L-1]
        maps.append(1 + (field[..., None] > q[:, None, None, :]).sum(-1))
    return maps


@pytest.mark.parametrize("B", [1, 4])
def test_block_and_network_sparse_equals_dense(B):
    net = small_net()
    x = torch.randn(B, 3, 16, 16)
    maps = blob_maps(B, [(16, 16), (8, 8), (4, 4)], 3)
    assert all(m.dtype == torch.int64 and int(m.min()) >= 1 and int(m.max()) <= 3 for m in maps)
    with torch.no_grad():
        u = net.stem(x)
    for block, m in zip(net.blocks, maps, strict=True):
        dense = run_block_frozen(block, u, m, sparse=False)
        sparse = run_block_frozen(block, u, m, sparse=True)
        torch.testing.assert_close(sparse, dense, **TOL)
        first = block[0](u)  # positions that run unit 1 only are frozen after it
        assert torch.equal(sparse.permute(0, 2, 3, 1)[m == 1], first.permute(0, 2, 3, 1)[m == 1])
        u = dense
    torch.testing.assert_close(frozen_forward(net, x, maps, True), frozen_forward(net, x, maps, False), **TOL)
    # every position at N = L: the full network; N = 1 everywhere: stem, units 1 and classifier
    full = [torch.full_like(m, 3) for m in maps]
    torch.testing.assert_close(frozen_forward(net, x, full, True), net(x), **TOL)
    dense_flops, sparse_flops = frozen_flops(net, x, maps)
    assert frozen_flops(net, x, full) == (dense_flops, dense_flops)
    from pact_pyro.flops import FlopTable

    t = FlopTable.measure(net, (3, 16, 16))
    ones = [torch.ones_like(m) for m in maps]
    assert frozen_flops(net, x, ones)[1] == B * (t.stem + t.classifier + sum(u[0] for u in t.units))
    assert frozen_flops(net, x, ones)[1] < sparse_flops < dense_flops == B * t.full


def test_block_dense_fallback_on_a_large_dense_batch():
    """B·H·W = 4096 > DENSE_MIN_POSITIONS with every position active: the per-unit rule runs dense."""
    net = small_net(1)
    block = net.blocks[0]
    u = net.stem(torch.randn(4, 3, 32, 32)).detach()
    m = torch.full((4, 32, 32), 3, dtype=torch.int64)
    m[0, :5, :5] = 2
    torch.testing.assert_close(
        run_block_frozen(block, u, m, True), run_block_frozen(block, u, m, False), **TOL
    )


def test_units_map_errors():
    net = small_net()
    u = net.stem(torch.randn(1, 3, 32, 32)).detach()
    with pytest.raises(ValueError, match=r"units_map must be an int64 tensor of shape \[1, 32, 32\]"):
        run_block_frozen(net.blocks[0], u, torch.ones(1, 32, 32, dtype=torch.int32))
    bad = torch.ones(1, 32, 32, dtype=torch.int64)
    bad[0, 3, 4] = 4
    with pytest.raises(ValueError, match=r"units_map must lie in 1\.\.3.*got values 1\.\.4"):
        run_block_frozen(net.blocks[0], u, bad)
    with pytest.raises(ValueError, match="one map per block"):
        frozen_forward(net, torch.randn(1, 3, 32, 32), [torch.ones(1, 32, 32, dtype=torch.int64)])


def test_benchmark_smoke():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "spatial.py"), "--smoke", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("batch_1", "batch_4"):
        m = record[key]
        assert m["flop_speedup"] > 1.0 and m["wall_speedup"] > 0
        assert m["quotient"] == pytest.approx(m["wall_speedup"] / m["flop_speedup"], rel=1e-3)
        assert m["max_abs_logit_diff"] <= 1e-4
    assert record["settings"]["smoke"] is True and record["env"]["torch_num_threads"] == 1
