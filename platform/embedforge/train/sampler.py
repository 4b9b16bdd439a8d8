"""Which dataset and which rows make each global batch (pure, deterministic, resumable).

QZhou-Embedding trains with one dataset per batch (a batch never mixes tasks or score
scales), datasets drawn with p_i ∝ n_i^α, and in stage 2 a fixed share of retrieval batches.
Everything here is a function of ``(seed, step)`` and the datasets' contents, so every rank
computes the same plan without talking to the others, and a resumed run picks up at exactly
the batch it would have trained next: the data position *is* the step number.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
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


def pack_batches(keys: Sequence[frozenset[Hashable]], order: Sequence[int],
                 batch_size: int) -> list[list[int]]:
    """Greedy packing of rows (in ``order``) into full batches whose texts never repeat.

    ``keys[i]`` are the texts (or their hashes) of row *i* that must be unique inside a batch.
    A row clashing with the open batch waits for the next one (it is not dropped); rows left
    over at the end, too few for a full batch, wait for the next epoch.
    """
    batches: list[list[int]] = []
    waiting: list[int] = []
    current: list[int] = []
    seen: set[Hashable] = set()
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


def canonical_order(keys: Sequence[frozenset[Hashable]]) -> list[int]:
    """Rows whose texts clash least first: the order in which greedy packing fits the most
    distinct rows into one batch (the classic min-degree heuristic), ties by row index."""
    freq: Counter[Hashable] = Counter(k for ks in keys for k in ks)
    return sorted(range(len(keys)), key=lambda i: (sum(freq[k] for k in keys[i]), i))


def distinct_capacity(keys: Sequence[frozenset[Hashable]]) -> int:
    """How many rows one batch can hold without repeating a text, packing in canonical order.

    A batch of any size up to this is guaranteed: packing ``canonical_order`` greedily takes
    exactly these rows first (a row that clashes once keeps clashing until the batch closes).
    """
    seen: set[Hashable] = set()
    n = 0
    for i in canonical_order(keys):
        if not keys[i] & seen:
            seen |= keys[i]
            n += 1
    return n


@dataclass(frozen=True)
class BatchDecision:
    """What the plan does with one dataset, decided before training starts (log + summary)."""

    name: str
    kind: str
    size: int
    requested: int  # the kind's configured global batch
    capacity: int  # most rows one batch can hold with distinct texts
    batch: int  # the batch this dataset trains with (0: left out)
    action: str  # ok | shrunk | left_out

    def describe(self) -> str:
        if self.action == "ok":
            return f"{self.name}: batches of {self.batch}"
        why = (f"{self.size} rows" if self.size < self.requested
               else f"only {self.capacity} of its {self.size} rows fit one batch with distinct texts")
        if self.action == "shrunk":
            return f"{self.name}: {why} < batch {self.requested}; trains with batches of {self.batch}"
        return f"{self.name}: {why} < batch {self.requested}; left out"


def plan_batch_sizes(datasets: Sequence[DatasetInfo], batch_sizes: dict[str, int],
                     keys_of: Callable[[int], Sequence[frozenset[Hashable]]] | None = None, *,
                     world: int = 1, min_fraction: float = 0.5) -> list[BatchDecision]:
    """Each dataset's batch size, decided once on the driver so no worker can fail mid-run.

    A dataset whose distinct-text capacity reaches its kind's batch keeps it; one that reaches
    at least ``min_fraction`` of it trains with the largest multiple of ``world`` it can fill
    (fewer in-batch negatives, same loss); below that it is left out, since a much smaller
    batch changes what its loss optimises.
    """
    out = []
    for i, d in enumerate(datasets):
        want = batch_sizes[d.kind]
        cap = d.size if keys_of is None else distinct_capacity(keys_of(i))
        cap = min(cap, d.size)
        if cap >= want:
            out.append(BatchDecision(d.name, d.kind, d.size, want, cap, want, "ok"))
            continue
        shrunk = cap // world * world
        floor = max(world, 2, math.ceil(want * min_fraction))
        if shrunk >= floor:
            out.append(BatchDecision(d.name, d.kind, d.size, want, cap, shrunk, "shrunk"))
        else:
            out.append(BatchDecision(d.name, d.kind, d.size, want, cap, 0, "left_out"))
    return out


class BatchPlan:
    """Step -> (dataset index, row indices of the global batch).

    ``keys_of(dataset_index)`` returns the per-row uniqueness keys of a dataset (read lazily).
    ``retrieval_share``: fraction of batches from retrieval datasets when both retrieval and
    other kinds are present (None: all datasets drawn by size alone). ``decisions``: each
    dataset's batch size from :func:`plan_batch_sizes` (computed here when not given).

    Every epoch of a dataset is a fresh shuffle packed into batches of distinct texts, so
    epochs may hold different numbers of batches; a dataset's k-th batch is found by walking
    the epochs' lengths, never by assuming they are equal.
    """

    def __init__(self, datasets: Sequence[DatasetInfo], batch_sizes: dict[str, int], *,
                 alpha: float = 0.5, retrieval_share: float | None = None, seed: int = 0,
                 keys_of: Callable[[int], Sequence[frozenset[Hashable]]] | None = None,
                 decisions: Sequence[BatchDecision] | None = None, world: int = 1,
                 min_fraction: float = 0.5):
        if not datasets:
            raise ValueError("no training datasets")
        self.datasets = list(datasets)
        if decisions is None:
            decisions = plan_batch_sizes(self.datasets, batch_sizes, keys_of, world=world,
                                         min_fraction=min_fraction)
        self.decisions = list(decisions)
        if [x.name for x in self.decisions] != [d.name for d in self.datasets]:
            raise ValueError("batch decisions do not match the datasets")
        self._sizes = [x.batch for x in self.decisions]
        usable = [i for i, b in enumerate(self._sizes) if b > 0]
        self.skipped = [(x.name, x.size, x.requested) for x in self.decisions if not x.batch]
        if not usable:
            raise ValueError("no dataset can fill one batch of its kind: "
                             + "; ".join(x.describe() for x in self.decisions)
                             + "; lower the batch sizes")
        self.seed = seed
        self.keys_of = keys_of
        self._choices: list[int] = []
        self._uses: list[int] = []  # how many batches of the same dataset came before each step
        self._counts = [0] * len(datasets)
        self._prefix: list[tuple[int, ...]] = []  # batches per dataset before each step
        self._epoch_lens: list[list[int]] = [[] for _ in datasets]
        self._keys: dict[int, Sequence[frozenset[Hashable]]] = {}
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
        return self._sizes[i]

    def _dataset_at(self, step: int) -> int:
        while len(self._choices) <= step:
            rng = random.Random(f"{self.seed}:choice:{len(self._choices)}")
            d = rng.choices(range(len(self.datasets)), weights=self.probs)[0]
            self._prefix.append(tuple(self._counts))
            self._choices.append(d)
            self._uses.append(self._counts[d])
            self._counts[d] += 1
        return self._choices[step]

    def _keys_of(self, d: int) -> Sequence[frozenset[Hashable]]:
        if d not in self._keys:
            n = self.datasets[d].size
            self._keys[d] = self.keys_of(d) if self.keys_of else [frozenset((i,)) for i in range(n)]
        return self._keys[d]

    @lru_cache(maxsize=64)  # noqa: B019 - one plan per training run
    def _epoch(self, d: int, epoch: int) -> tuple[tuple[int, ...], ...]:
        keys = self._keys_of(d)
        order = list(range(self.datasets[d].size))
        random.Random(f"{self.seed}:{self.datasets[d].name}:{epoch}").shuffle(order)
        batches = pack_batches(keys, order, self.batch_size(d))
        if not batches:
            # this shuffle packed nothing: the canonical order fills at least one batch of this
            # size (that is how the size was chosen), so the epoch is never empty
            batches = pack_batches(keys, canonical_order(keys), self.batch_size(d))
        if not batches:  # decisions handed in that this data cannot honour
            raise ValueError(f"dataset {self.datasets[d].name!r}: {len(keys)} rows cannot fill one "
                             f"batch of {self.batch_size(d)} distinct texts; lower its batch size")
        return tuple(tuple(b) for b in batches)

    def _locate(self, d: int, use: int) -> tuple[int, int]:
        """(epoch, position) of dataset ``d``'s ``use``-th batch, epochs of any length."""
        lens = self._epoch_lens[d]
        epoch = 0
        while True:
            if epoch == len(lens):
                lens.append(len(self._epoch(d, epoch)))
            if use < lens[epoch]:
                return epoch, use
            use -= lens[epoch]
            epoch += 1

    def batch(self, step: int) -> tuple[int, list[int]]:
        """(dataset index, global batch row indices) for ``step``."""
        d = self._dataset_at(step)
        epoch, pos = self._locate(d, self._uses[step])
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
