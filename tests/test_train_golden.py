"""Golden values of the batch plan: which rows every step trains on (pure, milliseconds).

The plan decides what the model learns: a changed shuffle, packing rule or dataset draw moves
every benchmark figure while each unit test of the sampler can still pass (issue #32: the
training benchmark moved 1.3 points and nothing noticed). These values change only in a
commit that says why (``EMBEDFORGE_UPDATE_GOLDEN=1``, see ``tests/conftest.py``).
"""

from __future__ import annotations

import hashlib
import json

from embedforge.train.sampler import BatchPlan, DatasetInfo, plan_batch_sizes


def digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def clashing_keys() -> dict[str, list[frozenset[int]]]:
    """Per dataset, rows' text keys with the clashes real data has: several queries sharing a
    positive (retrieval), a pair and its swapped copy (pair), repeated texts (classification)."""
    retrieval = [frozenset((1000 + i, 5000 + i // 3, 9000 + (i * 7) % 50)) for i in range(120)]
    pair = [frozenset((20000 + i // 2,)) for i in range(80)]
    classification = [frozenset((30000 + i % 45,)) for i in range(50)]
    return {"r": retrieval, "p": pair, "c": classification}


def stage2_plan() -> BatchPlan:
    keys = clashing_keys()
    infos = [DatasetInfo("r", "retrieval", 120), DatasetInfo("p", "pair", 80),
             DatasetInfo("c", "classification", 50)]
    sizes = {"retrieval": 16, "pair": 32, "classification": 8}
    decisions = plan_batch_sizes(infos, sizes, lambda i: keys[infos[i].name], world=2)
    return BatchPlan(infos, sizes, alpha=0.5, retrieval_share=0.5, seed=7,
                     keys_of=lambda i: keys[infos[i].name], decisions=decisions, world=2)


def test_batch_plan_golden(golden):
    plan = stage2_plan()
    golden.check("decisions", [[x.name, x.batch, x.action] for x in plan.decisions])
    steps = [plan.batch(s) for s in range(60)]
    golden.check("first_steps", [[d, rows] for d, rows in steps[:3]])
    golden.check("plan_60_steps", digest(steps))
    golden.check("epochs_after_60", plan.epochs_at(60))
