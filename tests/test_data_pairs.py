import pytest

from embedforge.data.fields import RowError
from embedforge.data.pairs import from_nli, from_pair_label, from_sts


def test_sts_keeps_score_and_range_and_swaps():
    a, b = from_sts({"sentence1": "x", "sentence2": "y", "score": "3.8"}, "stsb", "ins", {})
    assert (a.query, a.positive, a.score) == ("x", "y", 3.8)
    assert (b.query, b.positive, b.score) == ("y", "x", 3.8)
    assert a.meta["range"] == [0.0, 5.0] and b.meta["swapped"] is True
    assert a.id != b.id
    [c, _] = from_sts({"s1": "x", "s2": "y", "score": 0.7}, "d", "", {}, (0.0, 1.0))
    assert c.meta["range"] == [0.0, 1.0]


def test_sts_identical_texts_not_duplicated():
    assert len(from_sts({"s1": "x", "s2": "x", "score": 5}, "d", "", {})) == 1


@pytest.mark.parametrize(("row", "reason"), [
    ({"s1": "x", "s2": "y", "score": "high"}, "bad_score"),
    ({"s1": "x", "s2": "y", "score": "7"}, "bad_score"),
    ({"s1": "x", "s2": "", "score": "1"}, "empty_text"),
    ({"s1": "x", "score": "1"}, "missing_field"),
    ({"s1": "x", "s2": "y", "score": "nan"}, "bad_score"),
])
def test_sts_bad_rows(row, reason):
    with pytest.raises(RowError) as e:
        from_sts(row, "d", "", {})
    assert e.value.reason == reason


@pytest.mark.parametrize(("label", "score"), [
    ("entailment", 2.0), ("neutral", 1.0), ("contradiction", 0.0), ("Entailment", 2.0),
    ("contradictory", 0.0),
])
def test_nli_label_mapping(label, score):
    out = from_nli({"premise": "p", "hypothesis": "h", "label": label}, "snli", "", {})
    assert [s.score for s in out] == [score, score]
    assert [(s.query, s.positive) for s in out] == [("p", "h"), ("h", "p")]


def test_nli_numeric_labels_need_a_map():
    with pytest.raises(RowError) as e:
        from_nli({"s1": "p", "s2": "h", "label": "0"}, "mnli", "", {})
    assert e.value.reason == "unknown_label"
    hf_mnli = {"0": "entailment", "1": "neutral", "2": "contradiction"}
    [s, _] = from_nli({"s1": "p", "s2": "h", "label": 0}, "mnli", "", {}, hf_mnli)
    assert s.score == 2.0
    with pytest.raises(RowError, match="unknown NLI label"):
        from_nli({"s1": "p", "s2": "h", "label": "-"}, "snli", "", {})


@pytest.mark.parametrize(("label", "score"), [
    ("1", 1.0), ("0", 0.0), ("true", 1.0), ("False", 0.0), ("yes", 1.0), ("no", 0.0),
    (True, 1.0), (0, 0.0),
])
def test_binary_pair_labels(label, score):
    out = from_pair_label({"s1": "a", "s2": "b", "label": label}, "lcqmc", "", {})
    assert [s.score for s in out] == [score, score]
    assert out[0].meta["range"] == [0.0, 1.0]


def test_binary_unknown_label():
    with pytest.raises(RowError) as e:
        from_pair_label({"s1": "a", "s2": "b", "label": "maybe"}, "d", "", {})
    assert e.value.reason == "unknown_label" and "'maybe'" in e.value.message
