"""The benchmark scripts (benchmarks/*.py) run in smoke mode (tiny sizes, 1 thread) and print one JSON line
with the promised fields. No timing assertions: timings on a shared CPU say nothing in a test."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"pact_benchmark_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(name: str, capsys, *extra: str) -> dict:
    record = _load(name).main(["--smoke", "--threads", "1", *extra])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert json.loads(lines[0]) == json.loads(json.dumps(record))
    assert record["env"]["threads"] == 1 and record["env"]["torch_num_threads"] == 1
    assert record["settings"]["smoke"] is True
    return record


def test_train_step_smoke(capsys):
    r = _run("train_step", capsys, "--replay")
    assert set(r["sides"]) == {"plain", "pact", "pact_single"}
    for key in ("pact_over_plain", "pact_single_over_plain"):
        assert r[key]["ratio_of_medians"] > 0
    assert r["replay"]["pact_replay_over_plain"]["ratio_of_medians"] > 0
    assert set(r["minor_page_faults_per_step"]) == {"plain", "pact", "pact_single"}


def test_train_step_bound_smoke(capsys):
    """``--bound``: the fused extra work is timed beside the plain step and turned into the floor ratio; the
    smoke network (depth 8) has no halting, so the fused work is also run once at depth 14."""
    r = _run("train_step", capsys, "--bound")
    b = r["bound"]
    assert b["reference"] == "plain" and set(b["sides"]) == {"plain", "pact_extra_fused"}
    assert b["smallest_pact_over_plain"] == pytest.approx(1 + b["extra_over_reference"], abs=1e-4)
    _load("train_step").extra_fused(14, 2, 8)()  # two residuals per block: compiles and runs


def test_inference_smoke(capsys):
    r = _run("inference", capsys)
    for key in ("batch_1", "batch_2", "batch_8"):
        m = r[key]
        assert m["flop_speedup"] >= 1.0  # heads calibrated: some units are skipped
        assert m["quotient"] == pytest.approx(m["wall_speedup"] / m["flop_speedup"], rel=1e-3)
        q = m["wall_speedup_per_round"]["per_round_ratio_median"] / m["flop_speedup"]
        assert m["quotient_per_round"] == pytest.approx(q, rel=1e-3)
        assert m["flops_threshold_mean"] <= m["flops_full"] * 1.01
        assert set(m["per_format"]) == {"nchw", "nhwc"}
        assert m["stream"]["quotient"] == pytest.approx(
            m["stream"]["wall_speedup"] / m["flop_speedup"], rel=1e-3
        )
    sides = {f"{s}_{f}" for s in ("full", "threshold", "stream") for f in ("nchw", "nhwc")}
    assert set(r["batch_8"]["sides"]) == sides | {"full_chunked", "threshold_chunked"}
    assert r["batch_8"]["chunked"]["chunk_size"] == 3


def test_memory_smoke(capsys):
    r = _run("memory", capsys)
    m = r["batch_8"]
    assert set(m["peak_mib"]) == {"full", "pact", "act"}
    # PACT keeps one state between units, ACT a state and an accumulator
    assert m["kept_between_units_mib"]["pact"] < m["kept_between_units_mib"]["act"]
    assert m["peak_mib"]["pact"] <= m["peak_mib"]["full"] * 1.05
    assert m["peak_mib"]["pact"] < m["peak_mib"]["act"]
    c = r["batch_8_chunk_2"]  # at most 2 of the 8 examples per unit call: below the unchunked peaks
    assert c["chunk_size"] == 2 and c["peak_mib"]["pact"] < m["peak_mib"]["pact"]
    assert c["peak_mib"]["pact"] < c["peak_mib"]["act"]


def test_conv_rows_smoke(capsys):
    r = _run("conv_rows", capsys)
    for unit in ("block1", "block3"):
        table = r["units"][unit]["by_format_and_rows"]
        assert set(table) == {f"{f}_{k}" for f in ("nchw", "nhwc") for k in (1, 2)}
        assert all(v["us_per_example"] > 0 and v["gflops"] > 0 for v in table.values())


def test_imagefolder_smoke(capsys):
    if not (_load("imagefolder").DEFAULT_CIFAR / "train").is_dir():
        pytest.skip("CIFAR-10 JPEGs not available")
    r = _run("imagefolder", capsys)
    assert set(r["images_per_s"]) == {"workers_0", "workers_1"}
    assert all(v > 0 for rates in r["images_per_s"].values() for v in rates.values())
