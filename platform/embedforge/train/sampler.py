"""Which dataset and which rows make each global batch (pure, deterministic, resumable).

QZhou-Embedding trains with one dataset per batch (a batch never mixes tasks or score
scales), datasets drawn with p_i ∝ n_i^α, and in stage 2 a fixed share of retrieval batches.
Everything here is a function of ``(seed, step)`` and the datasets' contents, so every rank
computes the same plan without talking to the others, and a resumed run picks up at exactly
the batch it would have trained next: the data position *is* the step number.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str  # retrieval | pair | classification
    size: int


def dataset_weights(sizes: Sequence[int], alpha: float) -> list[float]:
    """p_i ∝ n_i^α, normalised (α=1: proportional, α=0: uniform)."""
    raw = [float(n) ** alpha if n > 0 else 0.0 for n in sizes]
    total = sum(raw)
    if total <= 0:
        raise ValueError("no dataset has rows")
    return [r / total for r in raw]


def pack_batches(keys: Sequence[frozenset[str]], order: Sequence[int], batch_size: int) -> list[list[int]]:
    """Greedy packing of rows (in ``order``) into full batches whose texts never repeat.

    ``keys[i]`` are the texts of row *i* that must be unique inside a batch. A row clashing
    with the open batch waits for the next one (it is not dropped); rows left over at the
    end, too few for a full batch, wait for the next epoch.
    """
    batches: list[list[int]] = []
    waiting: list[int] = []
    current: list[int] = []
    seen: set[str] = set()
    for i in order:
        pending = [*waiting, i]
        waiting = []
        for j in pending:
            if keys[j] & seen:
                waiting.append(j)
                continue
            current.append(j)
            seen |= keys[j]
            if len(current) == batch_size:
                batches.append(current)
                current, seen = [], set()
    return batches


class BatchPlan:
    """Step -> (dataset index, row indices of the global batch).

    ``keys_of(dataset_index)`` returns the per-row uniqueness keys of a dataset (read lazily,
    cached per epoch). ``retrieval_share``: fraction of batches from retrieval datasets when
    both retrieval and other kinds are present (None: all datasets drawn by size alone).
    """

    def __init__(self, datasets: Sequence[DatasetInfo], batch_sizes: dict[str, int], *,
                 alpha: float = 0.5, retrieval_share: float | None = None, seed: int = 0,
                 keys_of: Callable[[int], Sequence[frozenset[str]]] | None = None):
        if not datasets:
            raise ValueError("no training datasets")
        self.datasets = list(datasets)
        self.batch_sizes = batch_sizes
        # a dataset smaller than one batch of its kind cannot keep "one dataset per batch":
        # it is left out (and reported) rather than failing the run or being padded with repeats
        usable = [i for i, d in enumerate(self.datasets) if d.size >= batch_sizes[d.kind]]
        self.skipped = [(d.name, d.size, batch_sizes[d.kind]) for i, d in enumerate(self.datasets)
                        if i not in usable]
        if not usable:
            raise ValueError("every dataset is smaller than one batch of its kind: "
                             + ", ".join(f"{n} ({s} rows < {b})" for n, s, b in self.skipped)
                             + "; lower the batch sizes")
        self.seed = seed
        self.keys_of = keys_of
        self._choices: list[int] = []
        self._uses: list[int] = []  # how many batches of the same dataset came before each step
        self._counts = [0] * len(datasets)
        self._prefix: list[tuple[int, ...]] = []  # batches per dataset before each step
        retr = [i for i in usable if self.datasets[i].kind == "retrieval"]
        other = [i for i in usable if self.datasets[i].kind != "retrieval"]
        if retrieval_share is not None and retr and other:
            groups = [(retr, retrieval_share), (other, 1.0 - retrieval_share)]
        else:
            groups = [(usable, 1.0)]
        self.probs = [0.0] * len(self.datasets)
        for members, share in groups:
            w = dataset_weights([self.datasets[i].size for i in members], alpha)
            for i, p in zip(members, w, strict=True):
                self.probs[i] = share * p

    def batch_size(self, i: int) -> int:
        return self.batch_sizes[self.datasets[i].kind]

    def _dataset_at(self, step: int) -> int:
        while len(self._choices) <= step:
            rng = random.Random(f"{self.seed}:choice:{len(self._choices)}")
            d = rng.choices(range(len(self.datasets)), weights=self.probs)[0]
            self._prefix.append(tuple(self._counts))
            self._choices.append(d)
            self._uses.append(self._counts[d])
            self._counts[d] += 1
        return self._choices[step]

    @lru_cache(maxsize=64)  # noqa: B019 - one plan per training run
    def _epoch(self, d: int, epoch: int) -> tuple[tuple[int, ...], ...]:
        n = self.datasets[d].size
        order = list(range(n))
        random.Random(f"{self.seed}:{self.datasets[d].name}:{epoch}").shuffle(order)
        keys = self.keys_of(d) if self.keys_of else [frozenset((str(i),)) for i in range(n)]
        batches = pack_batches(keys, order, self.batch_size(d))
        if not batches:
            raise ValueError(f"dataset {self.datasets[d].name!r}: {n} rows cannot fill one batch of "
                             f"{self.batch_size(d)} distinct texts; lower its batch size")
        return tuple(tuple(b) for b in batches)

    def batch(self, step: int) -> tuple[int, list[int]]:
        """(dataset index, global batch row indices) for ``step``."""
        d = self._dataset_at(step)
        use = self._uses[step]
        epoch0 = self._epoch(d, 0)
        epoch, pos = divmod(use, len(epoch0))
        return d, list(self._epoch(d, epoch)[pos])

    def epochs_at(self, step: int) -> dict[str, float]:
        """Epochs consumed per dataset after ``step`` steps (for the progress line)."""
        self._dataset_at(step)
        return {d.name: round(used * self.batch_size(i) / max(d.size, 1), 3)
                for i, (d, used) in enumerate(zip(self.datasets, self._prefix[step], strict=True))}


def rank_slice(rows: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's equal share of a global batch (batch sizes are multiples of the world size)."""
    if len(rows) % world:
        raise ValueError(f"global batch of {len(rows)} does not split over {world} ranks")
    per = len(rows) // world
    return list(rows[rank * per:(rank + 1) * per])
