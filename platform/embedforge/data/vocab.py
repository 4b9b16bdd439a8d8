"""What column names and label words mean: one vocabulary for every reader of raw files.

Prepare's source formats (:mod:`.pairs`, :mod:`.classification`, header detection in
:mod:`.formats`) and evaluation's local tasks (:mod:`embedforge.eval.readers`) read the same
kinds of files (STS-B, NLI, LCQMC, Banking77...). Both look columns up here, so a file that
prepare reads for training is read the same way as an evaluation task. Each tuple is in
priority order: the first column present wins (exact name first, then case-insensitively).
"""

from __future__ import annotations

# pairs (STS, NLI, binary pair labels)
TEXT1 = ("sentence1", "s1", "text1", "text_a", "premise", "query", "question1", "sentence_a")
TEXT2 = ("sentence2", "s2", "text2", "text_b", "hypothesis", "positive", "question2",
         "sentence_b")
SCORE = ("score", "similarity", "label", "relatedness", "labels", "gold_label")
PAIR_LABEL = ("label", "gold_label", "labels", "is_duplicate", "similar")

# classification
TEXT = ("text", "sentence", "query", "content", "utterance", "title", "input")
LABEL = ("label", "category", "intent", "label_desc", "class", "labels", "gold_label")

# binary pair labels -> 1.0 / 0.0 (lower-case keys)
BINARY: dict[str, float] = {
    **dict.fromkeys(("1", "1.0", "true", "yes", "y", "t", "similar", "paraphrase", "duplicate",
                     "entailment"), 1.0),
    **dict.fromkeys(("0", "0.0", "false", "no", "n", "f", "dissimilar", "not_paraphrase",
                     "non_paraphrase", "not_duplicate", "not_entailment", "contradiction"), 0.0),
}


def all_columns() -> frozenset[str]:
    """Every column name above, lower-case: a first line naming one of them is a header."""
    return frozenset(c.lower() for group in (TEXT1, TEXT2, SCORE, PAIR_LABEL, TEXT, LABEL)
                     for c in group)
