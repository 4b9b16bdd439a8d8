"""How one evaluation task is named: ``NAME=KIND:PATH[:SPLIT]`` plus per-task options.

Pure (no mteb, no torch) so configs validate instantly and a spec travels to a Ray worker as
plain data: the worker builds the mteb task from it next to the files, never the driver.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import parse_range, safe_name
from ..safety import path_field

TaskKind = Literal["beir", "sts", "classification", "pair", "clustering", "reranking", "mteb"]
LOCAL_KINDS: tuple[str, ...] = ("beir", "sts", "classification", "pair", "clustering", "reranking")

# mteb task type and main metric of each local kind (the metric mteb's own tasks of that type
# report as main_score, so local and hub scores sit in the same columns)
KIND_TYPE: dict[str, str] = {
    "beir": "Retrieval", "sts": "STS", "classification": "Classification",
    "pair": "PairClassification", "clustering": "Clustering", "reranking": "Reranking",
}
KIND_MAIN_SCORE: dict[str, str] = {
    "beir": "ndcg_at_10", "sts": "cosine_spearman", "classification": "accuracy",
    "pair": "max_ap", "clustering": "v_measure", "reranking": "map_at_1000",
}
# kinds whose PATH may be a BEIR folder, so ``NAME=KIND:PATH:SPLIT`` names a qrels split
SPLIT_KINDS = ("beir", "reranking")


class TaskSpec(BaseModel):
    """One task to evaluate: a local file/folder (built as an mteb task) or an mteb task name.

    ``map`` names the column holding a role (``text1``, ``text2``, ``score``, ``label``,
    ``text``) when auto-detection guesses wrong; ``columns`` names the fields of a header-less
    file.
    """

    model_config = ConfigDict(extra="forbid")
    cli_label: ClassVar[str] = "--task {name}"  # how data-safety errors name its paths

    name: str = Field(description="task name in results, reports and the gate")
    kind: TaskKind = Field(
        description="beir | sts | classification | pair | clustering | reranking | mteb")
    path: str = path_field("input", description="file or BEIR folder (local path or fsspec URI); mteb: task name")
    split: str | None = Field(None, description="BEIR qrels split (default test)")
    benchmark: str | None = Field(
        None, description="mteb: take the task from this benchmark (its subset/split filters)")
    language: str = Field("eng-Latn", description="ISO 639-3 + script, e.g. cmn-Hans")
    instruction: str | None = Field(None, description="task description (overrides the map)")
    limit: int | None = Field(
        None, ge=1, description="evaluate at most this many queries / pairs / rows (seeded sample)")
    max_corpus: int | None = Field(
        None, ge=1, description="BEIR: cap the corpus; every relevant doc of the evaluated "
                                "queries is always kept, the rest is a seeded sample")
    seed: int = Field(42, description="seed of every sample and split drawn for this task")
    map: dict[str, str] = Field(default_factory=dict, description="role -> column")
    columns: list[str] | None = path_field("none", None, description="field names of a header-less file")
    header: bool | None = Field(None, description="first line is a header (auto when unset)")
    delimiter: str | None = Field(None, description="field separator (auto: tab if the first "
                                                    "line has one, else comma)")
    score_range: tuple[float, float] | None = Field(
        None, description="STS score range (default: 0-5 for the STS-B layout, else data min/max)")
    test_file: str | None = path_field(
        "input", None, description="classification: a separate test file (PATH is then the train file)")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="classification: stratified test share when one file")
    samples_per_label: int = Field(8, ge=1, description="classification: mteb's k-shot train size")
    n_experiments: int = Field(
        10, ge=1, description="classification: mteb's repeated fits; clustering: k-means runs")
    cluster_size: int | None = Field(
        None, ge=2, description="clustering: texts per k-means run, a seeded bootstrap draw "
                                "(default: as many as the task has)")
    depth: int = Field(
        20, ge=1, description="reranking from a BEIR folder: random other corpus docs added to "
                              "each query's positives as its candidates (seeded per query)")

    def path_role(self, name: str, role: str | None) -> str | None:
        """An mteb task's ``path`` is a task name, no location (see safety.path_flags)."""
        return "none" if name == "path" and self.kind == "mteb" else role

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return safe_name(v, "task")

    @field_validator("score_range", mode="before")
    @classmethod
    def _parse_range(cls, v: Any) -> Any:
        return parse_range(v)

    @property
    def is_local(self) -> bool:
        return self.kind in LOCAL_KINDS

    @property
    def from_beir(self) -> bool:
        """BEIR folder input: kind beir, or reranking whose PATH has no file extension."""
        from ..io import base_ext

        return self.kind == "beir" or (self.kind == "reranking" and not base_ext(self.path))

    @property
    def eval_split(self) -> str:
        return (self.split or "test") if self.from_beir else "test"

    def fingerprint(self) -> str:
        """Identifies the evaluated data (spec + file sizes/mtimes): the task's revision."""
        key = json.dumps([self.model_dump(mode="json"), _file_stamps(self)], sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:12]


def _file_stamps(spec: TaskSpec) -> list[Any]:
    import fsspec

    stamps: list[Any] = []
    paths = [spec.path] + ([spec.test_file] if spec.test_file else [])
    if spec.from_beir:
        base = spec.path.rstrip("/")
        paths = [f"{base}/corpus.jsonl", f"{base}/queries.jsonl", f"{base}/qrels/{spec.eval_split}.tsv"]
    for p in paths:
        try:
            fs, _, (fp,) = fsspec.get_fs_token_paths(p)
            info = fs.info(fp)
            stamps.append([p, info.get("size"), str(info.get("mtime") or info.get("LastModified"))])
        except (OSError, ValueError):
            stamps.append([p, None, None])
    return stamps


def parse_task_arg(text: str) -> TaskSpec:
    """``NAME=KIND:PATH[:SPLIT]`` -> TaskSpec (``NAME=mteb:TaskName`` for an mteb task).

    A trailing ``:SPLIT`` is recognised only when it holds no ``/`` so ``s3://…`` paths stay
    intact.
    """
    name, sep, rest = text.partition("=")
    kind, sep2, path = rest.partition(":")
    if not (sep and sep2 and name.strip() and path.strip()):
        raise ValueError(f"--task expects NAME=KIND:PATH[:SPLIT], got {text!r}")
    split = None
    if kind.strip() in SPLIT_KINDS:
        head, colon, tail = path.rpartition(":")
        if colon and head and re.fullmatch(r"[A-Za-z0-9_.\-]+", tail):
            path, split = head, tail
    try:
        return TaskSpec.model_validate(
            {"name": name.strip(), "kind": kind.strip(), "path": path.strip(), "split": split})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"--task {text!r}: {where}: {err['msg']}") from None


def spec_from_any(item: str | TaskSpec | dict[str, Any]) -> TaskSpec:
    """Accept the CLI string form, a dict (YAML) or a TaskSpec."""
    if isinstance(item, TaskSpec):
        return item
    if isinstance(item, str):
        return parse_task_arg(item)
    return TaskSpec.model_validate(item)


OPTION_LIST_KEYS = frozenset({"columns"})
OPTION_TEXT_KEYS = frozenset({"instruction", "path", "split", "delimiter", "language",
                              "test_file", "name"})


def parse_option_value(key: str, value: str) -> Any:
    """A ``--option NAME.KEY=VALUE`` value in the type the key needs."""
    import yaml

    if key in OPTION_LIST_KEYS and not value.strip().startswith("["):
        return [v.strip() for v in value.split(",")]
    if key == "delimiter":
        return value.encode().decode("unicode_escape")
    if key in OPTION_TEXT_KEYS:
        return value
    if key == "map":
        return dict(part.split(":", 1) for part in value.split(",") if ":" in part)
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value
