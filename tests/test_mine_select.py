import random

import pytest

from embedforge.mine.select import Candidate, RandomPool, SelectionSettings, select, threshold
from embedforge.text import normalize

POS = "Scout bees dance to show where the flowers are."


def cands(scores):
    return [Candidate(f"d{i}", f"document number {i} about topic {i * 7}", s, i + 1)
            for i, s in enumerate(scores)]


def test_threshold_handles_negative_scores():
    assert threshold(0.8, 0.95) == pytest.approx(0.76)
    assert threshold(-0.5, 0.95) == pytest.approx(-0.525)  # still below the positive
    assert threshold(0.0, 0.95) == 0.0


def test_rank_window_and_top_mode():
    s = SelectionSettings(rank_range=(3, 5), num_negatives=2, mode="top", margin=1.0)
    sel = select([POS], 0.9, cands([0.8, 0.7, 0.6, 0.5, 0.4, 0.3]), [], s, random.Random(0))
    assert sel.negatives == ["document number 2 about topic 14", "document number 3 about topic 21"]
    assert sel.sources == ["mined", "mined"] and sel.short == 0


def test_positive_aware_margin_drops_likely_false_negatives():
    s = SelectionSettings(rank_range=(1, 10), num_negatives=5, mode="top", margin=0.95)
    sel = select([POS], 0.80, cands([0.85, 0.77, 0.75, 0.70]), [], s, random.Random(0))
    assert sel.dropped["above_margin"] == 2  # 0.85 and 0.77 > 0.76
    assert len(sel.negatives) == 2 and sel.short == 3


def test_positive_and_near_duplicates_dropped():
    s = SelectionSettings(rank_range=(1, 10), num_negatives=3, mode="top", margin=1.0,
                          near_duplicate=0.2)
    c = [Candidate("p", POS, 0.5, 1), Candidate("n", POS.replace("flowers", "flower"), 0.5, 2),
         Candidate("x", "Something else entirely about volcanoes.", 0.4, 3),
         Candidate("y", "something else entirely about volcanoes", 0.3, 4)]
    sel = select([POS], 0.9, c, [], s, random.Random(0))
    assert sel.dropped == {"is_positive": 1, "near_duplicate_of_positive": 1, "duplicate": 1}
    assert sel.negatives == ["Something else entirely about volcanoes."]


def test_merging_llm_negatives_rescored():
    s = SelectionSettings(rank_range=(1, 10), num_negatives=3, mode="top", margin=0.95)
    existing = [("an llm negative that is too good", "llm", 0.79),
                ("a fine llm negative", "llm", 0.5)]
    sel = select([POS], 0.8, cands([0.6, 0.55, 0.5]), existing, s, random.Random(0))
    assert sel.dropped["existing_above_margin"] == 1
    assert sel.negatives[0] == "a fine llm negative"
    assert sel.sources == ["llm", "mined", "mined"]


def test_random_mode_is_seeded_and_top_up_only_when_asked():
    s = SelectionSettings(rank_range=(1, 50), num_negatives=3, margin=1.0, seed=1)
    pool = cands([0.1] * 20)
    a = select([POS], 0.9, pool, [], s, random.Random(5))
    b = select([POS], 0.9, pool, [], s, random.Random(5))
    assert a.negatives == b.negatives and len(a.negatives) == 3
    few = SelectionSettings(rank_range=(1, 2), num_negatives=4, margin=1.0)
    short = select([POS], 0.9, cands([0.1, 0.1]), [], few, random.Random(0))
    assert short.short == 2 and len(short.negatives) == 2
    topped = select([POS], 0.9, cands([0.1, 0.1]), [],
                    few.model_copy(update={"top_up_random": True}), random.Random(0),
                    random_pool=["random text one", "random text two", "random text three"])
    assert topped.short == 0 and topped.sources.count("random") == 2


def test_range_parsing():
    assert SelectionSettings(rank_range="10-100").rank_range == (10, 100)
    with pytest.raises(ValueError):
        SelectionSettings(rank_range="50-10")


def test_filtered_window_counts_only_valid_candidates():
    # ranks 1-2 are above the margin; a filtered window 1-2 takes the first two valid ones
    s = SelectionSettings(rank_range=(1, 2), num_negatives=2, mode="top", margin=0.95,
                          window="filtered")
    sel = select([POS], 0.80, cands([0.9, 0.85, 0.5, 0.4, 0.3]), [], s, random.Random(0))
    assert sel.negatives == ["document number 2 about topic 14", "document number 3 about topic 21"]
    raw = select([POS], 0.80, cands([0.9, 0.85, 0.5, 0.4, 0.3]), [],
                 s.model_copy(update={"window": "raw"}), random.Random(0))
    assert raw.negatives == [] and raw.short == 2


def _old_top_up(pool: list[str], seen: set[str], k: int, rng: random.Random) -> list[str]:
    """The per-sample filter ``select`` used before RandomPool (normalises the whole pool)."""
    kept = [t for t in pool if normalize(t) not in seen]
    return rng.sample(kept, min(k, len(kept)))


def test_random_pool_draws_what_the_per_sample_filter_drew():
    words = ["Alpha", "beta", "Gamma!", "delta", "alpha", "BETA.", "eps", "zeta", "eta", "theta"]
    gen = random.Random(7)
    texts = list(dict.fromkeys(f"{gen.choice(words)} {gen.choice(words)}" for _ in range(300)))
    pool = RandomPool(texts)
    for trial in range(200):
        seen = {normalize(t) for t in gen.sample(texts, gen.randint(0, 12))}
        seen.add("not in the pool at all")
        k = gen.randint(1, 9)
        assert pool.sample(seen, k, random.Random(trial)) == _old_top_up(texts, seen, k,
                                                                      random.Random(trial))
    # everything excluded, or asking for more than is left
    assert pool.sample({normalize(t) for t in texts}, 3, random.Random(0)) == []
    small = RandomPool(["a b", "A B!", "c"])
    assert small.sample({"a b"}, 5, random.Random(1)) == ["c"]
    assert pool.normalised == len(texts)  # once for the run, not once per sample


def test_select_top_up_is_the_same_with_a_list_or_a_shared_pool():
    few = SelectionSettings(rank_range=(1, 2), num_negatives=6, margin=1.0, top_up_random=True)
    texts = [f"random text {i}" for i in range(40)] + [POS, "Random text 3"]
    shared = RandomPool(texts)
    for seed in range(20):
        a = select([POS], 0.9, cands([0.1, 0.1]), [], few, random.Random(seed), random_pool=texts)
        b = select([POS], 0.9, cands([0.1, 0.1]), [], few, random.Random(seed), random_pool=shared)
        assert a.negatives == b.negatives and a.sources == b.sources
        assert POS not in a.negatives and a.sources.count("random") == 4
    assert shared.normalised == len(texts)
