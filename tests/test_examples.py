"""Every example runs: notebooks top to bottom in smoke mode (``CI=true``), scripts with smoke flags.

As in Pyro's ``tests/test_examples.py``: each example is listed here with tiny settings, and
:func:`test_coverage` fails when an example exists that is not listed (or a listed one has gone).

Notebooks execute with ``nbclient`` on the ``python3`` kernel spec that ``pip install ipykernel`` puts in the
virtualenv (``<venv>/share/jupyter/kernels/python3``); jupyter_client launches it with this interpreter.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOK_DIR = EXAMPLES / "notebooks"

NOTEBOOKS = [
    "01_quickstart.ipynb",
    "02_priors_and_guides.ipynb",
    "03_diagnostics_arviz.ipynb",
    "04_cifar_pact_act_plain.ipynb",
    "05_parity_lstm.ipynb",
    "06_spatial_ponder_maps.ipynb",
]

# script -> smoke flags ("{tmp}" becomes a temporary directory)
SCRIPTS: dict[str, list[str]] = {
    "parity_lstm.py": ["--smoke", "--runs", "{tmp}/parity"],
    "torchvision_cifar.py": [
        "--smoke",
        "--runs",
        "{tmp}/tv",
        "--folder",
        "{tmp}/folder",
        "--workers",
        "0",
        "--cifar",
        str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"),
    ],
    "static_depth.py": [
        "--source",
        "{tmp}/plain14.pt",
        "--units",
        "1",
        "2",
        "1",
        "--dataset",
        "mnist",
        "--epochs",
        "1",
        "--train-subset",
        "64",
        "--test-subset",
        "32",
        "--batch-size",
        "32",
        "--out",
        "{tmp}/static",
    ],  # fmt: skip
    "tradeoff_sweep.py": [
        "--preset",
        "{tmp}/preset.json",
        "--runs",
        "{tmp}/runs",
        "--out",
        "{tmp}/results/sweep",
    ],
}

# a tradeoff_sweep preset small enough for a test: one PACT, one ACT and one plain run on 64 MNIST images
SMOKE_PRESET = {
    "name": "smoke",
    "base": {
        "dataset": "mnist",
        "epochs": 1,
        "batch_size": 32,
        "train_subset": 64,
        "device": "cpu",
        "log_every": 1,
    },
    "seeds": [0],
    "pact": {"depth": 14, "taus": [0.05]},
    "act": {"depth": 14, "taus": [0.05]},
    "plain": {"depths": [8]},
    "variants": [{"name": "relaxed", "method": "pact", "tau": 0.05, "guide": "relaxed"}],
    "eval": {"test_subset": 64, "batch_size": 64, "pact_thresholds": [0.5]},
}


def _env(data_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CI="true", PACT_PYRO_DATA=str(data_root), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("PACT_PYRO_RUN", None)
    return env


def test_coverage():
    """Every notebook and every ``examples/*.py`` with a ``__main__`` block is listed above."""
    found_nb = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert sorted(NOTEBOOKS) == found_nb, (
        f"list every notebook in NOTEBOOKS: found {found_nb}, listed {NOTEBOOKS}"
    )
    found_py = sorted(p.name for p in EXAMPLES.glob("*.py") if "__main__" in p.read_text())
    missing = sorted(set(found_py) - set(SCRIPTS))
    assert not missing, f"list every example script in SCRIPTS (with smoke flags): {missing} are not listed"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_clean(name):
    """Outputs stripped, and a ``smoke_test = "CI" in os.environ`` cell shrinks the work."""
    nb = json.loads((NOTEBOOK_DIR / name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        f"{name}: strip outputs"
    )
    assert any('smoke_test = "CI" in os.environ' in "".join(c["source"]) for c in code), name


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, data_root, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for key, value in _env(data_root).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PACT_PYRO_RUN", raising=False)
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    start = time.time()
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    print(f"{name}: {time.time() - start:.1f} s (smoke mode)")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_runs(name, data_root, tmp_path):
    if not (EXAMPLES / name).is_file():  # listed ahead of its issue landing (tradeoff_sweep.py: issue 4)
        pytest.skip(f"examples/{name} does not exist yet")
    args = [a.replace("{tmp}", str(tmp_path)) for a in SCRIPTS[name]]
    (tmp_path / "preset.json").write_text(json.dumps(SMOKE_PRESET))
    if name == "static_depth.py":  # the source network to cut the units from
        from pact_pyro.models import plain_resnet

        torch.save(plain_resnet(14, in_channels=1).backbone.state_dict(), tmp_path / "plain14.pt")
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=tmp_path,
        env=_env(data_root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"{name} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    print(f"{name}: {time.time() - start:.1f} s (smoke flags)")
    if name == "static_depth.py":  # the cut network: exactly those units, every image, and its FLOPs
        result = json.loads((tmp_path / "static" / "eval.json").read_text())
        assert result["units_mean"] == [1.0, 2.0, 1.0] and result["examples"] == 32
        assert json.loads((tmp_path / "static" / "config.json").read_text())["extra"] == {"units": [1, 2, 1]}
    if name == "tradeoff_sweep.py":  # one row per run, the variant kept apart, and a plot
        import csv

        with open(tmp_path / "results" / "sweep.csv") as f:
            rows = list(csv.DictReader(f))
        assert sorted((r["method"], r["variant"]) for r in rows) == [
            ("act", ""), ("pact", ""), ("pact", "relaxed"), ("plain", "")
        ]  # fmt: skip
        assert (tmp_path / "results" / "sweep.png").stat().st_size > 5000
        # --report rebuilds the table and the plot from the CSV alone (a fresh clone has no run folders)
        md = (tmp_path / "results" / "sweep.md").read_text()
        table = (tmp_path / "results" / "sweep.csv").read_text()
        shutil.rmtree(tmp_path / "runs")
        (tmp_path / "results" / "sweep.md").unlink()
        (tmp_path / "results" / "sweep.png").unlink()
        report = subprocess.run(
            [sys.executable, str(EXAMPLES / name), *args, "--report"],
            cwd=tmp_path, env=_env(data_root), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert report.returncode == 0, report.stderr[-2000:]
        assert (tmp_path / "results" / "sweep.md").read_text() == md
        assert (tmp_path / "results" / "sweep.csv").read_text() == table  # rows survive a rewrite exactly
        assert (tmp_path / "results" / "sweep.png").stat().st_size > 5000
        assert not (tmp_path / "runs").exists()  # nothing trained


def test_sweep_plan_variants_and_workers():
    """Variants get their own run names; ``--worker K/N`` splits the plan without overlap or gaps."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import tradeoff_sweep as S
    finally:
        sys.path.remove(str(EXAMPLES))
    runs = S.plan(SMOKE_PRESET)
    names = [n for n, _ in runs]
    assert names == [
        "pact_d14_tau0.05_s0",
        "act_d14_tau0.05_s0",
        "pact_d14_tau0.05_relaxed_s0",
        "plain_d8_s0",
    ]
    variant = dict(runs)["pact_d14_tau0.05_relaxed_s0"]
    assert (variant["guide"], variant["method"], variant["_variant"], variant["depth"]) == (
        "relaxed", "pact", "relaxed", 14
    )  # fmt: skip
    assert sorted(names[0::2] + names[1::2]) == sorted(names)
    bad = {**SMOKE_PRESET, "variants": [{"name": "x", "guide": "relaxed"}]}
    with pytest.raises(ValueError, match="must set 'method' and 'tau'"):
        S.plan(bad)
    with pytest.raises(SystemExit):
        S.main(["--preset", "p.json", "--runs", "r", "--out", "o", "--worker", "2/2"])


def test_sweep_compare_interpolates_baselines_and_states_the_verdicts():
    """``compare``: a PACT point against ACT and the plain family, both linearly interpolated at its FLOPs,
    mean ± SE over seeds; the verdict bullets give the worst ACT margin and the best plain margin."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import tradeoff_sweep as S
    finally:
        sys.path.remove(str(EXAMPLES))

    def row(method, acc, flops, tau="", seed=0, depth=20, stage="finetune"):
        r = dict(method=method, accuracy=acc, flops_mean=flops, tau=tau, seed=seed, depth=depth, stage=stage)
        r["threshold"] = 0.5 if method == "pact" else ""
        return {**r, "variant": "", "flops_std_pct": 0.0, "unit_patterns": 1, "units_wrong": 1.0,
                "units_correct": 1.0}  # fmt: skip

    rows = [
        row("plain", 0.80, 40e6, depth=14, stage=""),
        row("plain", 0.90, 80e6, stage=""),
        row("act", 0.84, 50e6, tau=0.4),
        row("act", 0.88, 70e6, tau=0.2),
        row("pact", 0.870, 60e6, tau=0.1, seed=0),  # ACT here 86 %, plain 85 %
        row("pact", 0.874, 60e6, tau=0.1, seed=1),
        row("pact", 0.890, 75e6, tau=0.05),  # ACT here: outside its range; plain 88.75 %
        row("pact", 0.885, 70.2e6, tau=0.07),  # 0.3 % above ACT's range: its end (88 %); plain 87.55 %
        row("act", 0.85, 50e6, tau=0.4, stage="scratch"),  # from scratch, one τ each: no ACT curve, ...
        row("act", 0.84, 55e6, tau=0.2, stage="scratch"),
        row("pact", 0.845, 45e6, tau=0.1, stage="scratch"),  # ... cheaper than both: ≥ 84.5 − 85; plain 81.25
    ]
    variants = [  # A/B rows, judged on their own method's default curve at their FLOPs
        {**row("pact", 0.860, 65e6, tau=0.1), "variant": "relaxed"},  # default pact at 65 M: 87.84 %
        {**row("act", 0.860, 60e6, tau=0.2), "variant": "headlr1"},  # default act at 60 M: 86.0 %
        {**row("pact", 0.860, 90e6, tau=0.1), "variant": "temp"},  # beyond pact's range (60-75 M)
        {**row("pact", 0.900, 60e6, tau=0.1), "variant": "long"},  # held against ACT's own "long" curve
        {**row("act", 0.890, 50e6, tau=0.4), "variant": "long"},
        {**row("act", 0.910, 70e6, tau=0.2), "variant": "long"},  # long ACT at 60 M: 90.0 %
    ]
    md = S.compare(rows + variants)
    assert "- A/B finetune / relaxed (pact τ 0.1, 1 seed(s)): 86.00 % at 65.0 MFLOPs; default pact at " \
        "these FLOPs 87.84 %: -1.84" in md  # fmt: skip
    assert "- A/B finetune / headlr1 (act τ 0.2, 1 seed(s)): 86.00 % at 60.0 MFLOPs; default act at these " \
        "FLOPs 86.00 %: +0.00" in md  # fmt: skip
    assert "temp (pact τ 0.1, 1 seed(s)): 86.00 % at 90.0 MFLOPs; outside the default pact curve's FLOP " \
        "range, its nearest point 89.00 % at 75.0 MFLOPs" in md  # fmt: skip
    assert "| finetune | pact vs act | 0.1 | 2 | 87.20 ± 0.20 | 60.0 | 86.00 | +1.20 | 85.00 | +2.20 |" in md
    assert "| finetune | pact vs act | 0.05 | 1 | 89.00 | 75.0 | — | — | 88.75 | +0.25 |" in md
    assert "| scratch | pact vs act | 0.1 | 1 | 84.50 | 45.0 | — | ≥ -0.50 | 81.25 | +3.25 |" in md
    assert "nan" not in md
    assert "| finetune / long | pact vs act | 0.1 | 1 | 90.00 | 60.0 | 90.00 | +0.00 | 85.00 | +5.00 |" in md
    assert (
        "| finetune / relaxed | pact vs act | 0.1 | 1 | 86.00 | 65.0 | 87.00 | -1.00 |" in md
    )  # ACT default
    assert "| finetune | pact vs act | 0.07 | 1 | 88.50 | 70.2 | 88.00 | +0.50 | 87.55 | +0.95 |" in md
    assert (
        "- finetune, pact (3 τ): vs act at matched FLOPs worst +0.50 points (τ 0.07); ≥ −0.3 at 2 of 2 "
        "points inside its FLOP range; vs the plain family best +2.20 ± 0.20 (SE over seeds) (τ 0.1), ≥ 0 at "
        "3 of 3"
    ) in md
    assert (
        "- scratch, pact (1 τ): no point inside act's FLOP range; 1 point(s) cheaper than every act point: "
        "against its cheapest point worst -0.50 (τ 0.1), a lower bound of the margin if act's accuracy "
        "does not fall as its FLOPs grow; vs the plain family best +3.25 (τ 0.1), ≥ 0 at 1 of 1"
    ) in md
    assert "a lower bound" not in md.split("- scratch")[0]  # inside or above ACT's range: no bound
    # a sweep in progress (plain and ACT rows only) says so instead of an empty table
    assert S.compare(rows[:4]) == "No PACT or spatial-PACT run has finished yet: nothing to compare.\n"


STAGED_PRESET = {
    "name": "staged",
    "base": {"dataset": "mnist", "epochs": 1, "batch_size": 32, "train_subset": 64, "device": "cpu"},
    "seeds": [0],
    "plain": {"depths": [14, 8]},
    "finetune": {
        "source": "plain_d14_s0",
        "epochs": 0.5,
        "optimizer": "sgd",
        "schedule": "cosine",
        "lr": 0.01,
        "head_lr_mult": 10.0,
        "pact": {"depth": 14, "taus": [0.05], "extra_seeds": {"0.05": [1]}},
        "act": {"depth": 14, "taus": [0.05]},
        "spatial-pact": {"depth": 14, "taus": [0.05]},
        "sact": {"depth": 14, "taus": [0.05]},
        "variants": [{"name": "relaxed", "method": "pact", "tau": 0.05, "guide": "relaxed"}],
    },
    "scratch": {"act": {"depth": 14, "taus": [0.1]}},
    "eval": {"test_subset": 32, "batch_size": 32, "pact_thresholds": [0.5]},
}


def test_sweep_stages_sources_and_resume_from_csv(tiny_root, tmp_path, capsys):
    """Fine-tunes wait for their source run and start from its exported backbone; a fresh clone (no run
    directories, only the CSV and the source file) resumes without retraining anything."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import tradeoff_sweep as S
    finally:
        sys.path.remove(str(EXAMPLES))
    names = [n for n, _ in S.plan(STAGED_PRESET)]
    assert names == [
        "plain_d14_s0", "plain_d8_s0", "ft_pact_d14_tau0.05_s0", "ft_act_d14_tau0.05_s0",
        "ft_spatial-pact_d14_tau0.05_s0", "ft_sact_d14_tau0.05_s0", "ft_pact_d14_tau0.05_relaxed_s0",
        "ft_pact_d14_tau0.05_s1", "act_d14_tau0.1_s0",
    ]  # fmt: skip
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps(STAGED_PRESET))
    out = str(tmp_path / "res" / "sweep")
    args = ["--preset", str(preset), "--runs", str(tmp_path / "runs"), "--out", out,
            "--data-root", str(tiny_root), "--poll", "0.1"]  # fmt: skip
    assert S.main([*args, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "waits for plain_d14_s0" in listing and listing.count("ready") == 3, listing
    assert S.main(args) == 0
    source = tmp_path / "res" / "sweep_sources" / "plain_d14_s0.pt"
    cfg = json.loads((tmp_path / "runs" / "ft_act_d14_tau0.05_s0" / "config.json").read_text())
    assert cfg["init_from"] == str(source) and len(cfg["init_from_sha256"]) == 64
    with open(tmp_path / "res" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == names
    assert [r["stage"] for r in rows] == ["", ""] + ["finetune"] * 6 + ["scratch"]
    assert all(r["commit"] and 0 <= float(r["error_auroc_units"] or 0.5) <= 1 for r in rows)
    for r in rows:  # spatial rows: the per-image spread of the units maps and the uniform-map count
        spatial = r["method"] in ("spatial-pact", "sact")
        assert (r["map_std"] != "") == spatial and (r["uniform_maps"] != "") == spatial, r
        assert not spatial or (float(r["map_std"]) >= 0 and 0 <= int(r["uniform_maps"]) <= int(r["examples"]))
    shutil.rmtree(tmp_path / "runs")  # a fresh clone: the CSV and the source file are in the repository
    capsys.readouterr()
    assert S.main(args) == 0
    assert "training" not in capsys.readouterr().out
    with open(tmp_path / "res" / "sweep.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == names
    # a new recipe for the source run: it and every fine-tune from it train again, the other rows stay
    changed = {**STAGED_PRESET, "plain": {"depths": [14, 8], "lr": 0.05}}
    preset.write_text(json.dumps(changed))
    assert S.main(args) == 0
    trained = [
        line.split()[1].rstrip(":") for line in capsys.readouterr().out.splitlines() if "training (" in line
    ]
    assert trained == ["plain_d14_s0", "plain_d8_s0", *names[2:8]], trained


@pytest.mark.parametrize("preset", sorted(p.name for p in (EXAMPLES / "configs").glob("*.json")))
def test_every_preset_validates(preset, tmp_path, capsys):
    """``--dry-run`` plans every preset and validates each run's settings (no data, no training)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import tradeoff_sweep as S
    finally:
        sys.path.remove(str(EXAMPLES))
    args = [
        "--preset",
        str(EXAMPLES / "configs" / preset),
        "--runs",
        str(tmp_path / "r"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert S.main([*args, "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(S.plan(json.loads((EXAMPLES / "configs" / preset).read_text())))


def test_sweep_stash_carries_an_unfinished_run_to_a_fresh_clone(tiny_root, tmp_path, capsys):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import tradeoff_sweep as S
    finally:
        sys.path.remove(str(EXAMPLES))
    from pact_pyro.checkpoint import load_checkpoint
    from pact_pyro.train import TrainConfig, train

    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps(STAGED_PRESET))
    fields = dict(S.plan(STAGED_PRESET))["plain_d14_s0"]
    cfg = TrainConfig(**{k: v for k, v in fields.items() if not k.startswith("_")}, data_root=str(tiny_root))
    train(cfg, tmp_path / "runs" / "plain_d14_s0", progress=False)  # trained, not yet evaluated by the sweep
    out = str(tmp_path / "res" / "sweep")
    args = [
        "--preset",
        str(preset),
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        out,
        "--data-root",
        str(tiny_root),
    ]
    assert S.main([*args, "--stash"]) == 0
    stashed = tmp_path / "res" / "sweep_carry" / "plain_d14_s0" / "checkpoint.pt"
    assert "stashed plain_d14_s0 at step 2" in capsys.readouterr().out and stashed.is_file()
    shutil.rmtree(tmp_path / "runs")  # a fresh clone
    assert S.main([*args, "--only", "plain_d14_s0"]) == 0
    assert "continues from the stashed checkpoint" in capsys.readouterr().out
    a = load_checkpoint(stashed)["model"]
    b = load_checkpoint(tmp_path / "runs" / "plain_d14_s0" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed at its last step, not trained again


def test_sweep_controls_are_read_plotted_and_held_against_the_plain_line(tmp_path, capsys):
    """A preset's ``controls`` (JSON files next to the outputs) appear as black markers in the plot and as
    bullets with the plain family's interpolated accuracy at their FLOPs; a missing file is named on stderr
    and left out, a malformed entry is refused."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    sys.path.insert(0, str(EXAMPLES))
    try:
        import tradeoff_sweep as S
    finally:
        sys.path.remove(str(EXAMPLES))

    (tmp_path / "static.json").write_text(json.dumps({"eval": {"accuracy": 0.87, "flops_mean": 60e6}}))
    preset = {
        "controls": [{"label": "static 1/2", "file": "static.json"}, {"label": "gone", "file": "no.json"}]
    }
    controls = S.read_controls(preset, tmp_path / "sweep")
    assert controls == [{"label": "static 1/2", "accuracy": 0.87, "flops_mean": 60e6, "file": "static.json"}]
    assert "control 'gone'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="need 'label' and 'file'"):
        S.read_controls({"controls": [{"label": "x"}]}, tmp_path / "sweep")
    rows = [  # the plain line at 60 M: 80 % + (90 - 80) · 20 / 40 = 85 %
        {"method": "plain", "variant": "", "stage": "", "depth": d, "tau": "", "accuracy": a, "flops_mean": x}
        for d, a, x in ((14, 0.80, 40e6), (20, 0.90, 80e6))
    ]
    md = S.control_bullets(controls, rows)
    assert (
        "- control static 1/2 (`static.json`): 87.00 % at 60.0 MFLOPs; plain family there 85.00 %: +2.00"
        in md
    )
    with open(tmp_path / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "variant", "depth", "tau", "accuracy", "flops_mean"])
        w.writeheader()
        w.writerows({k: r[k] for k in w.fieldnames} for r in rows)
    from pact_pyro.plots import plot_tradeoff, read_sweep

    ax = plot_tradeoff(read_sweep(tmp_path / "sweep.csv"), controls=controls).axes[0]
    assert "control: static 1/2" in ax.get_legend_handles_labels()[1]
    star = next(c for c in ax.collections if c.get_label() == "control: static 1/2")
    np.testing.assert_allclose(star.get_offsets(), [[60.0, 87.0]])
    import pandas as pd  # no method column, no variants: one line, the control in the legend, nothing else

    bare = plot_tradeoff(pd.DataFrame({"accuracy": [0.8, 0.9], "flops_mean": [4e7, 8e7]}), controls=controls)
    assert bare.axes[0].get_legend_handles_labels()[1] == ["control: static 1/2"]
    assert len(bare.axes[0].containers) == 1
    matplotlib.pyplot.close("all")


def test_readme_python_blocks_run():
    """Every ```python block of the README runs as written, in order, each in a fresh namespace, and does
    what its comments say. One substitution: the torchvision block asks for ImageNet weights, which would
    download; here it builds the same architecture with ``weights=None`` (``tests/test_torchvision.py``
    checks the logits against torchvision's with every unit run)."""
    import re

    from pact_pyro.sites import ponder_halting_site

    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 3, f"README has {len(blocks)} python blocks; list the new one here"
    weights = "weights=ResNet50_Weights.IMAGENET1K_V2"
    assert weights in blocks[1]
    blocks[1] = blocks[1].replace(weights, "weights=None")
    spaces = []
    for code in blocks:
        ns: dict = {}
        exec(compile(code, "README.md", "exec"), ns)
        spaces.append(ns)

    quick, tv, lstm = spaces
    r, lean, x = quick["result"], quick["lean"], quick["x"]
    assert r.logits.shape == (32, 10) and r.units.shape == (32, 3) and r.flops.shape == (32,)
    assert ((r.units >= 1) & (r.units <= 3)).all()
    torch.testing.assert_close(lean.logits, r.logits, rtol=1e-5, atol=1e-5)  # "same result"
    assert torch.equal(lean.units, r.units) and x.shape == (32, 1, 28, 28)
    assert [len(layer) for layer in (tv["model"].backbone.layer1, tv["model"].backbone.layer4)] == [3, 3]
    x, y = torch.randn(4, 5, 16), torch.randint(0, 2, (4,))  # parity-shaped: [B, T, 16], one label each
    assert torch.isfinite(torch.tensor(lstm["svi"].step(x, y)))
    assert {ponder_halting_site(t) for t in range(5)} <= set(lstm["guide"].trace.nodes)


def test_sweep_commit_is_dirty_for_code_not_for_its_own_results(tmp_path):
    """The CSV's ``commit`` column: a clone whose only changes are the sweep's outputs (``results/``) is
    clean; an edited source file makes it ``+dirty``."""
    import shutil
    import subprocess

    repo = tmp_path / "clone"
    (repo / "examples").mkdir(parents=True)
    (repo / "results").mkdir()
    shutil.copy(EXAMPLES / "tradeoff_sweep.py", repo / "examples" / "tradeoff_sweep.py")
    (repo / "results" / "sweep.csv").write_text("method\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(git + cmd, cwd=repo, check=True)
    probe = [sys.executable, "-c", "import tradeoff_sweep as S; print(S.code_commit())"]

    def commit() -> str:
        return subprocess.run(probe, cwd=repo / "examples", capture_output=True, text=True, check=True).stdout

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    assert commit().strip() == head.stdout.strip()
    (repo / "results" / "sweep.csv").write_text("method\npact\n")  # the sweep's own output
    assert commit().strip() == head.stdout.strip()
    (repo / "examples" / "tradeoff_sweep.py").write_text(
        (repo / "examples" / "tradeoff_sweep.py").read_text() + "\n# edited\n"
    )
    assert commit().strip() == head.stdout.strip() + "+dirty"
