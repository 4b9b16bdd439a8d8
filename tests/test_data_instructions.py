from embedforge.instructions import (
    apply_instruction,
    format_query,
    resolve_instruction,
)


def test_report_prompt_format():
    assert format_query("Given a claim, retrieve evidence", "x") == (
        "Instruct: Given a claim, retrieve evidence\nQuery: x")
    assert format_query("", "x") == "x"


def test_asymmetric_retrieval_instructs_queries_only():
    q, docs = apply_instruction("retrieval", "task", "q", ["d1", "d2"])
    assert q == "Instruct: task\nQuery: q" and docs == ["d1", "d2"]


def test_symmetric_tasks_instruct_both_sides():
    for kind in ("pair", "classification", "clustering"):
        q, docs = apply_instruction(kind, "task", "a", ["b"])
        assert docs == ["Instruct: task\nQuery: b"] and q.startswith("Instruct: task")


def test_resolution_order():
    assert resolve_instruction("scifact", "beir").startswith("Given a scientific claim")
    assert resolve_instruction("mydata", "sts") == "Retrieve semantically similar text"
    assert resolve_instruction("scifact", "beir", overrides={"scifact": "X"}) == "X"
    assert resolve_instruction("scifact", "beir", "explicit", {"scifact": "X"}) == "explicit"


def test_training_and_evaluation_share_one_policy():
    """A dataset trained under a name is evaluated, under that name, with the same
    description (one shipped map, case-insensitive), on the same sides."""
    from embedforge.instructions import InstructionMap, applies

    imap = InstructionMap.load()
    for name, fmt, mteb_type in (("scifact", "beir", "Retrieval"), ("stsb", "sts", "STS"),
                                 ("banking77", "classification", "Classification")):
        trained = resolve_instruction(name, fmt)
        assert trained and imap.describe(name, mteb_type) == trained
        assert imap.describe(name.upper(), mteb_type) == trained
    # mteb's own task names resolve for training datasets named after them, too
    assert resolve_instruction("STSBenchmark", "sts") == imap.describe("STSBenchmark", "STS")
    assert applies("STS", "document") and not applies("Retrieval", "document")
