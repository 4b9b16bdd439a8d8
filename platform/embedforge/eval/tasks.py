"""Task specs -> mteb task instances: local files as real mteb task classes, hub tasks by name.

Local tasks subclass mteb's own abstract tasks (retrieval, STS, classification, pair
classification, clustering; reranking is retrieval over per-query candidates, as mteb 2 runs
its own SciDocsRR) and only fill ``self.dataset`` from files, so nDCG@10, Spearman, accuracy,
AP, V-measure and MAP are computed by mteb itself, exactly as for the leaderboard's tasks. Data is read in
``load_data`` (called by ``mteb.evaluate``), i.e. on whichever Ray worker runs the task.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import ConfigError
from . import readers
from .spec import KIND_MAIN_SCORE, KIND_TYPE, TaskSpec

log = logging.getLogger(__name__)


def _metadata(spec: TaskSpec) -> Any:
    from mteb.abstasks.task_metadata import TaskMetadata

    return TaskMetadata(
        name=spec.name,
        description=f"embedforge local {spec.kind} task from {spec.path}",
        dataset={"path": spec.path, "revision": spec.fingerprint()},
        type=KIND_TYPE[spec.kind],
        category="t2c" if spec.kind in ("classification", "clustering") else "t2t",
        modalities=["text"],
        eval_splits=[spec.eval_split],
        eval_langs=[spec.language],
        main_score=KIND_MAIN_SCORE[spec.kind],
        prompt=spec.instruction,
    )


def _report(spec: TaskSpec, stats: readers.ReadStats) -> None:
    if stats.skipped:
        log.warning("task %s: kept %d rows, skipped %d (e.g. %s)", spec.name, stats.kept,
                    stats.skipped, "; ".join(stats.examples[:3]))


def _retrieval_class(spec: TaskSpec) -> type:
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        data = readers.read_beir(spec)
        log.info("task %s: %d queries, corpus %d of %d docs", spec.name, len(data.queries),
                 len(data.corpus), data.corpus_total)
        split = RetrievalSplitData(
            corpus=Dataset.from_list(data.corpus),
            queries=Dataset.from_list([{"id": q, "text": t} for q, t in data.queries.items()]),
            relevant_docs=data.relevant,
            top_ranked=None,
        )
        self.dataset = {"default": {spec.eval_split: split}}
        self.data_loaded = True

    return type(f"Local_{spec.name}", (AbsTaskRetrieval,),
                {"metadata": _metadata(spec), "load_data": load_data})


def _sts_class(spec: TaskSpec) -> type:
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.sts import AbsTaskSTS

    pairs = readers.read_pairs(spec, binary=False)  # small; the range must be known up front
    lo, hi = readers.sts_range(spec, pairs)

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        _report(spec, pairs.stats)
        self.dataset = DatasetDict({"test": Dataset.from_dict(
            {"sentence1": pairs.text1, "sentence2": pairs.text2, "score": pairs.values})})
        self.data_loaded = True

    return type(f"Local_{spec.name}", (AbsTaskSTS,),
                {"metadata": _metadata(spec), "load_data": load_data,
                 "min_score": lo, "max_score": hi})


def _pair_class(spec: TaskSpec) -> type:
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.pair_classification import AbsTaskPairClassification

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        pairs = readers.read_pairs(spec, binary=True)
        _report(spec, pairs.stats)
        self.dataset = DatasetDict({"test": Dataset.from_dict(
            {"sentence1": pairs.text1, "sentence2": pairs.text2,
             "labels": [int(v) for v in pairs.values]})})
        self.data_loaded = True

    return type(f"Local_{spec.name}", (AbsTaskPairClassification,),
                {"metadata": _metadata(spec), "load_data": load_data})


def _classification_class(spec: TaskSpec) -> type:
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.classification import AbsTaskClassification

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        data = readers.read_classification(spec)
        _report(spec, data.stats)
        labels = sorted(set(data.train_label) | set(data.test_label))
        index = {lab: i for i, lab in enumerate(labels)}
        self.dataset = DatasetDict({
            "train": Dataset.from_dict({"text": data.train_text,
                                        "label": [index[x] for x in data.train_label]}),
            "test": Dataset.from_dict({"text": data.test_text,
                                       "label": [index[x] for x in data.test_label]}),
        })
        self.data_loaded = True

    return type(f"Local_{spec.name}", (AbsTaskClassification,),
                {"metadata": _metadata(spec), "load_data": load_data,
                 "samples_per_label": spec.samples_per_label,
                 "n_experiments": spec.n_experiments})


def _clustering_class(spec: TaskSpec) -> type:
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.clustering import AbsTaskClustering

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        data = readers.read_clustering(spec)
        _report(spec, data.stats)
        labels = sorted(set(data.labels))
        index = {lab: i for i, lab in enumerate(labels)}
        # every read row is embedded (``limit`` already drew the rows); each of the
        # ``n_clusters`` k-means runs clusters a seeded bootstrap draw of ``cluster_size``
        self.max_documents_per_cluster = min(spec.cluster_size or len(data.texts),
                                             len(data.texts))
        self.dataset = DatasetDict({"test": Dataset.from_dict(
            {"sentences": data.texts, "labels": [index[x] for x in data.labels]})})
        self.data_loaded = True

    return type(f"Local_{spec.name}", (AbsTaskClustering,),
                {"metadata": _metadata(spec), "load_data": load_data,
                 "max_fraction_of_documents_to_embed": None, "max_document_to_embed": None,
                 "n_clusters": spec.n_experiments})


def _reranking_class(spec: TaskSpec) -> type:
    """mteb 2 has no reranking abstask: its reranking tasks (SciDocsRR…) are retrieval tasks
    of type Reranking whose ``top_ranked`` lists each query's candidates; only those are
    scored, and MAP@1000 over them is the main score."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        data = readers.read_reranking(spec)
        _report(spec, data.stats)
        log.info("task %s: %d queries, %d candidate docs", spec.name, len(data.queries),
                 len(data.corpus))
        split = RetrievalSplitData(
            corpus=Dataset.from_list(data.corpus),
            queries=Dataset.from_list([{"id": q, "text": t} for q, t in data.queries.items()]),
            relevant_docs=data.relevant,
            top_ranked=data.candidates,
        )
        self.dataset = {"default": {spec.eval_split: split}}
        self.data_loaded = True

    return type(f"Local_{spec.name}", (AbsTaskRetrieval,),
                {"metadata": _metadata(spec), "load_data": load_data})


BUILDERS = {"beir": _retrieval_class, "sts": _sts_class, "pair": _pair_class,
            "classification": _classification_class, "clustering": _clustering_class,
            "reranking": _reranking_class}


def build_task(spec: TaskSpec) -> Any:
    """An mteb task instance for ``spec`` (hub tasks: ``mteb.get_task``; data loads lazily)."""
    if spec.kind == "mteb":
        return get_hub_task(spec.path, spec.benchmark)
    readers.check_spec(spec)
    return BUILDERS[spec.kind](spec)(seed=spec.seed)


def get_hub_task(name: str, benchmark: str | None = None) -> Any:
    """An mteb task by name; from ``benchmark`` when given, because a benchmark narrows its
    tasks (MTEB(eng, v2) keeps only the English subsets of MassiveIntentClassification…)."""
    import mteb

    if benchmark:
        for task in _benchmark(benchmark).tasks:
            if task.metadata.name == name:
                return task
        raise ConfigError(f"mteb benchmark {benchmark!r} has no task {name!r}")
    try:
        return mteb.get_task(name)
    except KeyError as exc:
        raise ConfigError(f"unknown mteb task {name!r} ({exc.args[0] if exc.args else ''})"
                          .strip()) from None


def _benchmark(name: str) -> Any:
    import mteb

    try:
        return mteb.get_benchmark(name)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"unknown mteb benchmark {name!r}: {exc}") from None


def benchmark_task_names(name: str) -> list[str]:
    """Task names of an mteb benchmark (``MTEB(eng, v2)``, ``MTEB(cmn, v1)``…).

    The task list ships inside mteb, so this works offline; running them needs the hub.
    """
    return [t.metadata.name for t in _benchmark(name).tasks]
