"""Classification samples and the same-label / other-label drawing contract.

Prepare keeps ``(text, label)`` as is (``query`` = text, ``positive`` = "", ``negatives`` = []).
The training stage calls :func:`draw_positive_and_negatives` per anchor: a random *other*
text with the same label becomes the positive, texts with other labels become negatives, and
the loss masks every same-label candidate out of the denominator (QZhou's classification
objective), so a batch never punishes the model for pulling two same-label texts together.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from ..schema import Sample
from .fields import RowError, as_text, get_value
from .vocab import LABEL, TEXT


def from_classification(data: Mapping[str, Any], dataset: str, instruction: str,
                        mapping: Mapping[str, str], labels: Sequence[str] | None = None,
                        label_map: Mapping[str, Any] | None = None) -> list[Sample]:
    text = as_text(get_value(data, "query", TEXT, mapping), "query")
    raw = get_value(data, "label", LABEL, mapping)
    label = as_text(raw, "label")
    if label_map:
        label = str(label_map.get(label, label))
    if labels is not None and label not in set(labels):
        raise RowError("unknown_label", f"label {label!r} is not one of the {len(labels)} "
                                        "declared labels (--option NAME.labels=...)")
    return [Sample(dataset=dataset, kind="classification", instruction=instruction, query=text,
                   label=label)]


def draw_positive_and_negatives(
    texts: Sequence[str], labels: Sequence[str], index: int, num_negatives: int,
    rng: random.Random, by_label: Mapping[str, Sequence[int]] | None = None,
) -> tuple[str, list[str]] | None:
    """Positive = random other same-label text; negatives = texts of other labels.

    Returns None when the anchor's label has no other text (no positive can be drawn).
    Negatives are drawn from distinct other labels first so they spread over classes.
    """
    if by_label is None:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, lab in enumerate(labels):
            groups[lab].append(i)
        by_label = groups
    label = labels[index]
    same = [i for i in by_label[label] if i != index and texts[i] != texts[index]]
    if not same:
        return None
    positive = texts[rng.choice(same)]
    other_labels = [lab for lab in by_label if lab != label]
    rng.shuffle(other_labels)
    negatives: list[str] = []
    seen = {texts[index], positive}
    rounds = 0
    while len(negatives) < num_negatives and other_labels and rounds < 4:
        for lab in other_labels:
            cand = texts[rng.choice(by_label[lab])]
            if cand not in seen:
                negatives.append(cand)
                seen.add(cand)
            if len(negatives) >= num_negatives:
                break
        rounds += 1
    return positive, negatives
