import random

import pytest

from embedforge.data.classification import draw_positive_and_negatives, from_classification
from embedforge.data.fields import RowError


def test_text_and_label_kept_as_is():
    [s] = from_classification({"text": "where is my card", "category": "card_arrival"}, "b77", "ins", {})
    assert (s.kind, s.query, s.label, s.positive, s.negatives) == (
        "classification", "where is my card", "card_arrival", "", [])


def test_declared_labels_and_label_map():
    with pytest.raises(RowError) as e:
        from_classification({"text": "t", "label": "x"}, "d", "", {}, labels=["a", "b"])
    assert e.value.reason == "unknown_label"
    [s] = from_classification({"text": "t", "label": "3"}, "d", "", {}, labels=["sports"],
                              label_map={"3": "sports"})
    assert s.label == "sports"


def test_draw_positive_same_label_negatives_other_labels():
    texts = ["a1", "a2", "a3", "b1", "b2", "c1"]
    labels = ["a", "a", "a", "b", "b", "c"]
    rng = random.Random(0)
    for _ in range(50):
        pos, negs = draw_positive_and_negatives(texts, labels, 0, 2, rng)
        assert pos in {"a2", "a3"}
        assert len(negs) == 2 and all(n[0] in "bc" for n in negs) and len(set(negs)) == 2
    # a label with a single text has no positive
    assert draw_positive_and_negatives(texts, labels, 5, 2, rng) is None
