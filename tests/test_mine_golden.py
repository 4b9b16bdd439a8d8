"""Golden values of negative selection: which candidates become a sample's negatives (pure).

Mining's rules (rank window, positive-aware margin, near-duplicates, seeded random picks, LLM
negatives merged) decide what stage 1 learns. A change that moves the chosen negatives must
say so in the commit that updates these values (``EMBEDFORGE_UPDATE_GOLDEN=1``).
"""

from __future__ import annotations

import hashlib
import json
import random

from embedforge.mine.select import Candidate, SelectionSettings, select

WORDS = ("cell", "protein", "gene", "vitamin", "risk", "trial", "dose", "mouse", "tumour", "virus")


def sample_case(i: int) -> tuple[str, float, list[Candidate], list[tuple[str, str, float]]]:
    """A positive, its score and 40 ranked candidates of sample ``i`` (near-duplicates and
    candidates scoring above the positive included), plus one LLM negative every third sample."""
    rng = random.Random(i)
    positive = " ".join(rng.choice(WORDS) for _ in range(8))
    pos_score = 0.6 + 0.3 * rng.random()
    scores = sorted((rng.uniform(0.1, pos_score + 0.1) for _ in range(40)), reverse=True)
    cands = []
    for rank, s in enumerate(scores, 1):
        text = (positive.upper() if rank == 5 else positive + "s" if rank == 6
                else " ".join(rng.choice(WORDS) for _ in range(8)))
        cands.append(Candidate(f"d{i}-{rank}", text, s, rank))
    existing = [(f"llm negative {i}", "llm", pos_score - 0.2)] if i % 3 == 0 else []
    return positive, pos_score, cands, existing


def test_selected_negatives_golden(golden):
    for mode in ("random", "top"):
        settings = SelectionSettings(rank_range=(3, 30), num_negatives=4, mode=mode, margin=0.95,
                                     near_duplicate=0.2, seed=3)
        chosen, dropped = [], {}
        for i in range(60):
            positive, score, cands, existing = sample_case(i)
            sel = select([positive], score, cands, existing, settings,
                         random.Random(f"{settings.seed}:s{i}"))
            chosen.append([sel.negatives, sel.sources, sel.short])
            for k, v in sel.dropped.items():
                dropped[k] = dropped.get(k, 0) + v
        golden.check(f"{mode}_negatives",
                     hashlib.sha256(json.dumps(chosen).encode()).hexdigest()[:16])
        golden.check(f"{mode}_dropped", dict(sorted(dropped.items())))
        golden.check(f"{mode}_first", chosen[0])
