"""Synthetic sequence tasks of ACT (Graves, arXiv 1603.08983, §3), generated from a seed (no files).

* **parity**: ``x ∈ {-1, 0, 1}^bits``: a uniform number ``k ∈ 1..bits`` of random entries set to ±1 at random,
  the rest 0; target ``y`` = parity of the number of ``+1`` entries; one input step (``x`` ``[B, 1, bits]``,
  ``y`` ``[B]``). Difficulty: ``k``.
* **addition**: ``T`` input steps, each a number of ``D ∈ 1..digits`` random decimal digits, one-hot per digit
  (``x`` ``[B, T, 10·digits]``, zeros past the number's length); from step 2 on the target is the running
  sum, ``digits + 1`` digits least significant first, class 10 = "no digit" past its length (``y``
  ``[B, T, digits + 1]``, ``-1`` at step 1: no target). Difficulty: the number of carries made while
  adding. Graves also randomised ``T`` (1..5); here ``T`` is fixed per task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SeqBatch", "parity", "addition", "TASKS", "task_sizes"]


@dataclass
class SeqBatch:
    """``x`` ``[B, T, I]`` float, ``y`` ``[B]`` or ``[B, T, K]`` int64, ``difficulty`` ``[B]`` int64."""

    x: torch.Tensor
    y: torch.Tensor
    difficulty: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def slice(self, i: int, j: int) -> SeqBatch:
        return SeqBatch(self.x[i:j], self.y[i:j], self.difficulty[i:j])


def _check(n: int, name: str, lo: int = 1) -> int:
    if not isinstance(n, int) or n < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {n!r}")
    return n


def parity(n: int, bits: int = 16, generator: torch.Generator | None = None) -> SeqBatch:
    """``n`` parity examples with ``bits`` entries (see the module docstring)."""
    _check(n, "n")
    _check(bits, "bits")
    k = torch.randint(1, bits + 1, (n,), generator=generator)
    order = torch.rand(n, bits, generator=generator).argsort(-1)  # a random permutation per example
    chosen = order < k.unsqueeze(-1)  # k random positions
    sign = torch.randint(0, 2, (n, bits), generator=generator) * 2 - 1
    x = (chosen * sign).to(torch.float32)
    y = (x == 1).sum(-1) % 2
    return SeqBatch(x.unsqueeze(1), y.to(torch.int64), k)


def addition(n: int, steps: int = 5, digits: int = 5, generator: torch.Generator | None = None) -> SeqBatch:
    """``n`` addition sequences of ``steps`` numbers of up to ``digits`` digits (see the module docstring)."""
    _check(n, "n")
    _check(steps, "steps", 2)
    _check(digits, "digits")
    length = torch.randint(1, digits + 1, (n, steps), generator=generator)  # D per number
    d = torch.randint(0, 10, (n, steps, digits), generator=generator)  # least significant first
    present = torch.arange(digits) < length.unsqueeze(-1)  # [n, T, digits]
    d = d * present
    x = torch.nn.functional.one_hot(d, 10).to(torch.float32) * present.unsqueeze(-1)
    x = x.reshape(n, steps, digits * 10)
    K = digits + 1
    y = torch.full((n, steps, K), -1, dtype=torch.int64)
    acc = torch.zeros(n, K, dtype=torch.int64)  # running sum, digit-wise
    acc[:, :digits] = d[:, 0]
    carries = torch.zeros(n, dtype=torch.int64)
    for t in range(1, steps):
        carry = torch.zeros(n, dtype=torch.int64)
        for i in range(K):
            s = acc[:, i] + (d[:, t, i] if i < digits else 0) + carry
            carry = s // 10
            acc[:, i] = s % 10
            carries += carry
        ndig = ((acc != 0) * (torch.arange(K) + 1)).max(-1).values.clamp(min=1)  # digits of the sum
        y[:, t] = torch.where(torch.arange(K) < ndig.unsqueeze(-1), acc, torch.full_like(acc, 10))
    return SeqBatch(x, y, carries)


#: the sequence tasks ``pact-pyro train --task`` knows, by name
TASKS = {"parity": parity, "addition": addition}


def task_sizes(task: str, bits: int = 16, digits: int = 5) -> dict:
    """``input_size``, ``output_size`` and ``classes`` (``None``: one label per sequence) of a task."""
    if task == "parity":
        return {"input_size": bits, "output_size": 2, "classes": None}
    if task == "addition":
        return {"input_size": 10 * digits, "output_size": 11 * (digits + 1), "classes": 11}
    raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
