import pytest

from embedforge.synth import rules


def test_normalize_and_language():
    assert rules.normalize("  Hello,   WORLD! ") == "hello world"
    assert rules.language_of("The cat sleeps.") == "latin"
    assert rules.language_of("一个孩子在玩球。") == "zh"
    assert rules.language_of("猫が寝ている") == "ja"
    assert rules.language_of("Кошка спит") == "cyrillic"
    assert rules.language_of("123 !!") == "unknown"


def test_difference():
    assert rules.difference("a b c d", "a b c d") == 0.0
    assert rules.difference("a b c d", "w x y z") == 1.0
    assert 0.4 < rules.difference("the cat sat on the mat", "the dog sat on a rug") < 0.6
    assert rules.difference("一个孩子在玩球", "一个孩子在玩球") == 0.0


ORIG = "Solar panels turn sunlight into electricity."


@pytest.mark.parametrize(("new", "reason"), [
    ("", "empty"),
    ("solar panels turn SUNLIGHT into electricity", "repeats_original"),
    ("太阳能电池板把阳光变成电力，这是一个很长的句子。", "language"),
    ("Panels make power.", "length"),
    ("Solar panels turn sunlight into electric power.", "too_similar"),
    ("Photovoltaic modules convert daylight to power.", None),
])
def test_paraphrase_sentence(new, reason):
    assert rules.check_paraphrase(ORIG, new) == reason


def test_paraphrase_length_bounds_are_15_percent():
    orig = "x" * 100
    assert rules.check_length(orig, "y" * 115, 0.15) is None
    assert rules.check_length(orig, "y" * 116, 0.15) == "length"
    assert rules.check_length(orig, "y" * 85, 0.15) is None
    assert rules.check_length(orig, "y" * 84, 0.15) == "length"


def test_paragraph_rules():
    para = "Bees dance to share where flowers are. The dance angle points to the food. Longer dances mean farther food."
    kept = "Bees dance to share where flowers are. Its angle shows the food's direction. A longer dance means the food is farther."
    assert rules.check_paraphrase(para, kept) == "identical_sentence"
    fresh = "Honeybees perform a dance to tell others about blossoms. Its angle shows the food's direction. Food that is further away gets a longer dance."
    assert rules.check_paraphrase(para, fresh, length_tolerance=0.5) is None


def test_distinct_augment_and_hard_negative():
    assert rules.check_distinct("A b.", ["a B"]) == "duplicate"
    assert rules.check_distinct("new", ["a"]) is None
    q, p = "How do bees find flowers?", "Bees use scent and colour to find flowers, and scouts report locations."
    ok = rules.check_augment(q, p, "Why do bees make honey in hives?",
                             "Bees make honey to store food for winter, packing nectar into wax cells.",
                             "Hives are built from wax that worker bees secrete from glands on their bodies.")
    assert ok is None
    assert rules.check_augment(q, p, "How do bees find flowers?", p, "x" * len(p)) == "rewrite_not_new_aspect"
    assert rules.check_augment(q, p, "Why do bees make honey in hives?", "Short.", p) == "length"
    assert rules.check_hard_negative(q, p, p) == "repeats_original"
    assert rules.check_hard_negative(q, p, "Wasps use scent and colour to find prey, and scouts report nests.") is None
    assert rules.check_hard_negative(q, p, "Too short.") == "length"


def test_within_difference_agrees_with_difference():
    from embedforge.text import difference, within_difference

    pairs = [("the cat sat on the mat", "the cat sat on a mat"), ("a b c d", "w x y z"),
             ("short", "a much longer text with many more words in it"), ("same", "same"),
             ("猫坐在垫子上", "猫坐在垫子上了")]
    for a, b in pairs:
        for limit in (0.05, 0.2, 0.5, 0.9):
            assert within_difference(a, b, limit) == (difference(a, b) < limit), (a, b, limit)
    assert not within_difference("same", "same", 0)  # 0 disables the check
