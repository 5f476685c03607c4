"""Data-parallel training (``torchrun``, gloo on CPU): sharding, exact gradient averaging, loss trajectory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pact_pyro.data import TensorData, batches
from pact_pyro.distributed import allreduce_loss_and_grads, shard_batches
from tests.common import tiny_mnist


def _data(n: int = 37) -> TensorData:
    g = torch.Generator().manual_seed(1)
    return TensorData(
        torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 10, "mnist"
    )


@pytest.mark.parametrize("augment", [False, True])
def test_shards_partition_the_global_batches(augment):
    data = _data()
    ref = list(batches(data, 6, True, torch.Generator().manual_seed(5), "cpu", augment, drop_last=True))
    one = list(shard_batches(data, 6, torch.Generator().manual_seed(5), "cpu", augment, 0, 1))
    assert len(one) == len(ref) == 6
    for (x, y), (xr, yr) in zip(one, ref, strict=True):  # world size 1 is the plain batch iterator, exactly
        assert torch.equal(x, xr) and torch.equal(y, yr)
    shards = [
        list(shard_batches(data, 6, torch.Generator().manual_seed(5), "cpu", augment, r, 3)) for r in range(3)
    ]
    for i, (xr, yr) in enumerate(ref):  # rank r holds global_batch[r::3]; together the whole global batch
        for r in range(3):
            assert torch.equal(shards[r][i][0], xr[r::3]) and torch.equal(shards[r][i][1], yr[r::3])
    with pytest.raises(ValueError, match="multiple of the number of processes 4"):
        next(shard_batches(data, 6, torch.Generator(), "cpu", False, 0, 4))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grad_worker(rank: int, world: int, init: str, x: torch.Tensor, y: torch.Tensor, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        from pact_pyro.models import pact_resnet

        torch.manual_seed(0)
        net = pact_resnet(8, 10, 1).backbone.eval()  # BN on running statistics: examples are independent

        def loss_fn(model, guide, x, y):
            return torch.nn.functional.cross_entropy(net(x), y)

        step = allreduce_loss_and_grads(loss_fn, [net], world)
        loss = step(None, None, x[rank::world], y[rank::world])
        torch.save({"loss": loss, "grads": {n: p.grad for n, p in net.named_parameters()}}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_allreduce_gives_the_global_batch_gradient(tmp_path):
    """2 gloo processes with half the batch each: averaged gradients = 1-process gradient of the batch."""
    from pact_pyro.models import pact_resnet

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    mp.start_processes(
        _grad_worker,
        args=(2, f"tcp://127.0.0.1:{_free_port()}", x, y, str(tmp_path / "g")),
        nprocs=2,
        start_method="fork",
    )
    torch.manual_seed(0)
    net = pact_resnet(8, 10, 1).backbone.eval()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    for r in range(2):
        got = torch.load(tmp_path / f"g.{r}", weights_only=True)
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-6, atol=1e-7)
        for n, p in net.named_parameters():
            torch.testing.assert_close(got["grads"][n], p.grad, rtol=1e-5, atol=1e-7, msg=n)


# Tolerance of the loss-trajectory comparison. The 2-process run sees the same global batches and takes the
# same averaged gradient steps, but (i) BatchNorm normalises each rank's 8 examples with their own batch
# statistics instead of all 16 (plain DDP without SyncBatchNorm), and (ii) the halting noise z ~ q comes from
# per-rank streams. Measured (depth 14, batch 16, 8 steps, seed 0): max |Δloss| 0.067, mean 0.019, on losses
# ≈ 4.4 nats. Tolerance: max 0.15 and mean 0.05 (≈ 3% and 1% of the loss).
MAX_DIFF, MEAN_DIFF = 0.15, 0.05


def _train_worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    from pact_pyro.train import TrainConfig, train

    train(TrainConfig(**cfg), out, progress=False)


def _compare(tmp_path: Path) -> None:
    from pact_pyro.checkpoint import load_checkpoint
    from pact_pyro.train import load_run

    read = lambda d: [json.loads(s) for s in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = read("ddp"), read("one")
    assert (
        [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9))
    )  # rank 0 logged, once per step
    diff = torch.tensor([abs(r["loss"] - s["loss"]) for r, s in zip(a, b, strict=True)])
    print(f"2-process vs 1-process |Δloss| per step: {[round(v, 4) for v in diff.tolist()]}")
    assert diff.max() < MAX_DIFF and diff.mean() < MEAN_DIFF

    ck = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ck["world_size"] == 2 and ck["step"] == 8 and len(ck["rng"]["per_rank_torch"]) == 2
    load_run(tmp_path / "ddp", "cpu")  # the same format as a 1-process checkpoint
    ref = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    assert ck["model"].keys() == ref["model"].keys() and ck["optim"].keys() == ref["optim"].keys()


def test_two_processes_match_one_process(tmp_path):
    """train() in 2 forked gloo processes (as torchrun starts them) vs 1 process, same global batch 16."""
    from pact_pyro.train import TrainConfig, train

    root = tiny_mnist(tmp_path / "data")
    cfg = dict(dataset="mnist", depth=14, train_subset=128, batch_size=16, epochs=1.0, seed=0, device="cpu",
               log_every=1, checkpoint_every=4, data_root=str(root))  # fmt: skip
    mp.start_processes(_train_worker, args=(2, _free_port(), cfg, str(tmp_path / "ddp")), nprocs=2,
                       start_method="fork")  # fmt: skip
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(**cfg), tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(n)
    _compare(tmp_path)


@pytest.mark.slow
def test_torchrun_cli_two_processes_match_one_process(tmp_path):
    """The same through ``torchrun --nproc_per_node=2 -m pact_pyro.cli train`` (3 interpreter starts)."""
    root = tiny_mnist(tmp_path / "data")
    common = [
        "train", "--dataset", "mnist", "--depth", "14", "--train-subset", "128", "--batch-size", "16",
        "--epochs", "1", "--seed", "0", "--device", "cpu", "--log-every", "1", "--checkpoint-every", "4",
        "--no-eval", "--no-progress", "--data-root", str(root),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
    ]
    ddp = subprocess.run([*launcher, "-m", "pact_pyro.cli", *common, "--out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    from pact_pyro import cli

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main([*common, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(n)
    _compare(tmp_path)


def _crash_worker(rank: int, world: int, port: int, cfg: dict, out: str, crash_at: int, resume: bool) -> None:
    import pyro

    if crash_at:
        real_step = pyro.infer.SVI.step
        calls = {"n": 0}

        def crashing_step(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == crash_at:
                os._exit(3)  # every rank dies at the same step, like a killed job
            return real_step(self, *args, **kwargs)

        pyro.infer.SVI.step = crashing_step
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    from pact_pyro.train import TrainConfig, train

    train(TrainConfig(**cfg), out, progress=False, resume=resume)


@pytest.mark.slow  # 3 two-process runs: ≈ 45 s on the shared 2-core machine
def test_two_process_run_resumes_bit_identically(tmp_path):
    """A 2-process run that dies at step 6 and resumes from its step-4 checkpoint ends with the weights of an
    uninterrupted 2-process run (per-rank noise streams and averaged BatchNorm buffers are restored)."""
    from pact_pyro.checkpoint import load_checkpoint

    root = tiny_mnist(tmp_path / "data", n_train=64)
    cfg = dict(dataset="mnist", depth=14, batch_size=16, epochs=2.0, seed=0, device="cpu", checkpoint_every=3,
               data_root=str(root))  # fmt: skip

    def run(out, crash_at=0, resume=False):
        mp.start_processes(_crash_worker, args=(2, _free_port(), cfg, str(tmp_path / out), crash_at, resume),
                           nprocs=2, start_method="fork")  # fmt: skip

    run("full")
    with pytest.raises(mp.ProcessExitedException):
        run("crashed", crash_at=6)
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["step"] == 4  # end of epoch 1 (4 steps)
    run("crashed", resume=True)
    a, b = (
        load_checkpoint(tmp_path / "full" / "checkpoint.pt"),
        load_checkpoint(tmp_path / "crashed" / "checkpoint.pt"),
    )
    assert a["step"] == b["step"] == 8
    for key in ("model", "guide"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)


def _seq_worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    from pact_pyro.train_seq import SeqConfig, train_seq

    train_seq(SeqConfig(**cfg), out, progress=False)


def test_sequence_runs_are_data_parallel_too(tmp_path):
    """train_seq goes through the same trainer: 2 gloo processes, each with half of every global batch, end
    with the weights of 1 process (ACT-LSTM: no sampled latents, so only float rounding differs)."""
    from pact_pyro.checkpoint import load_checkpoint
    from pact_pyro.train_seq import SeqConfig, train_seq

    cfg = dict(method="act", bits=6, max_ponder=3, hidden_size=16, steps=12, batch_size=16, eval_every=6,
               checkpoint_every=6, val_examples=64, tau=0.05, tau_start_accuracy=0.0, threads=1)  # fmt: skip
    mp.start_processes(_seq_worker, args=(2, _free_port(), cfg, str(tmp_path / "ddp")), nprocs=2,
                       start_method="fork")  # fmt: skip
    n = torch.get_num_threads()
    try:
        train_seq(SeqConfig(**cfg), tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(n)
    a = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert a["step"] == b["step"] == 12 and b["world_size"] == 2
    for k, v in a["model"].items():
        assert torch.allclose(v, b["model"][k], rtol=1e-4, atol=1e-5), k
    import pyro

    from pact_pyro.train_seq import build_seq

    pyro.set_rng_seed(0)
    init = build_seq(SeqConfig(**cfg))[0].state_dict()
    moved = max(float((v - init[k]).abs().max()) for k, v in a["model"].items())
    assert moved > 1e-3, "the runs did not train"
