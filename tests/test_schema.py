import pyarrow as pa
import pytest
from pydantic import ValidationError

from embedforge.schema import ARROW_SCHEMA, COLUMNS, Sample, make_id, rows_to_table, validate_table


def test_columns_are_the_contract():
    assert tuple(ARROW_SCHEMA.names) == COLUMNS == (
        "id", "dataset", "kind", "instruction", "query", "positive", "negatives", "score",
        "label", "source", "parent_id", "meta",
    )


def test_id_is_stable_and_content_addressed():
    a = Sample(dataset="d", kind="retrieval", query="q", positive="p")
    b = Sample(dataset="d", kind="retrieval", query="q", positive="p")
    c = Sample(dataset="d", kind="retrieval", query="q", positive="p2")
    other = Sample(dataset="e", kind="retrieval", query="q", positive="p")
    assert a.id == b.id
    assert len({a.id, c.id, other.id}) == 3
    assert make_id("d", "x") == make_id("d", "x") != make_id("d", "y")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(kind="retrieval", query="q", positive=""), "positive"),
        (dict(kind="retrieval", query="  ", positive="p"), "query is empty"),
        (dict(kind="pair", query="a", positive="b"), "score"),
        (dict(kind="classification", query="a"), "label"),
        (dict(kind="retrieval", query="q", positive="p", source="paraphrase"), "parent_id"),
        (dict(kind="other", query="q", positive="p"), "kind"),
    ],
)
def test_kind_rules(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        Sample(dataset="d", **kwargs)


def test_rows_roundtrip_through_arrow():
    s = Sample(dataset="d", kind="pair", query="a", positive="b", score=3.5, meta={"range": [0, 5]})
    table = rows_to_table([s.to_row()])
    validate_table(table)
    row = table.to_pylist()[0]
    assert row["score"] == 3.5 and row["negatives"] == [] and row["meta"] == '{"range": [0, 5]}'
    assert rows_to_table([]).num_rows == 0


def test_validate_table_names_the_bad_column():
    table = rows_to_table([]).drop(["label"])
    with pytest.raises(ValueError, match="label"):
        validate_table(table)
    bad = rows_to_table([]).set_column(7, "score", pa.array([], pa.string()))
    with pytest.raises(ValueError, match="score"):
        validate_table(bad)
