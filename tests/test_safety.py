"""Output guards without Ray: input/output overlap and ownership markers."""

from __future__ import annotations

import json

import pytest

from embedforge.config import ConfigError
from embedforge.safety import (
    OWNER_FILE,
    check_no_overlap,
    claim_output,
    overlap,
    owner,
    remove_owned,
)


def test_overlap_equal_contains_inside_and_apart(tmp_path):
    data = tmp_path / "data"
    assert overlap(str(data), str(data)) == "is"
    assert overlap(str(data) + "/", str(data / "." )) == "is"
    assert overlap(str(tmp_path), str(data)) == "contains"
    assert overlap(str(data / "out"), str(data)) == "is inside"
    assert overlap(str(tmp_path / "data2"), str(data)) is None   # a prefix is not a parent
    assert overlap(str(tmp_path / "out"), str(data)) is None


def test_overlap_sees_through_symlinks_globs_and_uris(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    assert overlap(str(tmp_path / "link"), str(data)) == "is"
    assert overlap(str(data / "sub"), str(data / "*.jsonl")) == "is inside"
    assert overlap("s3://b/runs/x", "s3://b/runs/x/") == "is"
    assert overlap("s3://b/runs", "s3://b/runs/x") == "contains"
    assert overlap("gs://b/runs/x", "s3://b/runs/x") is None
    assert overlap(str(data), "hf:org/name") is None


def test_check_no_overlap_names_both_flags(tmp_path):
    with pytest.raises(ConfigError, match=r"--output .*/x is --input .*/x"):
        check_no_overlap(str(tmp_path / "x"), [("--input", str(tmp_path / "x"))])
    with pytest.raises(ConfigError, match=r"contains --corpus"):
        check_no_overlap(str(tmp_path), [("--input", "/elsewhere"), ("--corpus", str(tmp_path / "c"))])
    check_no_overlap(str(tmp_path / "out"), [("--input", str(tmp_path / "in")), ("--corpus", None)])


def test_claim_marks_a_new_or_empty_folder_and_accepts_its_own(tmp_path):
    new = tmp_path / "new"
    claim_output(str(new), "mine")
    assert owner(str(new)) == "mine"
    assert json.loads((new / OWNER_FILE).read_text())["stage"] == "mine"
    (new / "samples").mkdir()
    claim_output(str(new), "mine")                 # a second run into its own folder
    empty = tmp_path / "empty"
    (empty / "stage2" / "sub").mkdir(parents=True)   # folders made ahead hold nothing to lose
    claim_output(str(empty), "prepare")
    assert owner(str(empty)) == "prepare"
    deep = tmp_path / "deep"
    (deep / "a" / "b").mkdir(parents=True)
    (deep / "a" / "b" / OWNER_FILE).write_text("{}")    # a marker further down is a file
    with pytest.raises(ConfigError, match="not empty"):
        claim_output(str(deep), "prepare")


def test_claim_refuses_a_foreign_folder_unless_forced(tmp_path):
    user = tmp_path / "mydata"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=rf"--output {user} is not empty and it has no "
                                          rf"{OWNER_FILE} marker.*--force"):
        claim_output(str(user), "prepare")
    assert owner(str(user)) is None
    claim_output(str(tmp_path / "other"), "synthesize")
    (tmp_path / "other" / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="belongs to the synthesize stage"):
        claim_output(str(tmp_path / "other"), "mine")
    claim_output(str(user), "prepare", force=True)
    assert owner(str(user)) == "prepare" and (user / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        claim_output(str(tmp_path / "file"), "mine", force=True)


def test_remove_owned_deletes_only_inside_a_folder_the_stage_owns(tmp_path):
    run = tmp_path / "train"
    claim_output(str(run), "train")
    (run / "stage1").mkdir()
    (run / "stage1" / "w").write_text("x")
    remove_owned(str(run / "stage1"), str(run), "train")
    assert not (run / "stage1").exists() and run.exists()
    remove_owned(str(run / "missing"), str(run), "train")     # nothing to do

    user = tmp_path / "user"
    (user / "stage1").mkdir(parents=True)
    with pytest.raises(ConfigError, match=rf"refusing to delete {user}/stage1: it has no"):
        remove_owned(str(user / "stage1"), str(user), "train")
    with pytest.raises(ConfigError, match="belongs to the train stage"):
        remove_owned(str(run), str(run), "prepare")
    with pytest.raises(ConfigError, match="not inside"):
        remove_owned(str(user), str(run), "train")
    assert (user / "stage1").exists() and run.exists()
