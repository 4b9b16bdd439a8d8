from embedforge.llm.cache import ResponseCache, cache_key

MSGS = [{"role": "user", "content": "hi"}]


def test_key_covers_every_input_but_nothing_else():
    base = cache_key("m", "t.v1", MSGS, {"temperature": 0.9}, "p0:0")
    assert base == cache_key("m", "t.v1", MSGS, {"temperature": 0.9}, "p0:0")
    variants = [
        cache_key("m2", "t.v1", MSGS, {"temperature": 0.9}, "p0:0"),
        cache_key("m", "t.v2", MSGS, {"temperature": 0.9}, "p0:0"),
        cache_key("m", "t.v1", [{"role": "user", "content": "hi!"}], {"temperature": 0.9}, "p0:0"),
        cache_key("m", "t.v1", MSGS, {"temperature": 0.8}, "p0:0"),
        cache_key("m", "t.v1", MSGS, {"temperature": 0.9}, "p0:1"),
    ]
    assert len({base, *variants}) == 6


def test_roundtrip_miss_and_torn_file(tmp_path):
    cache = ResponseCache(str(tmp_path / "c"))
    key = cache_key("m", "t", MSGS, {}, 0)
    assert cache.get(key) is None
    cache.put(key, {"content": "x", "prompt_tokens": 3})
    assert cache.get(key) == {"content": "x", "prompt_tokens": 3}
    path = tmp_path / "c" / key[:2] / f"{key}.json"
    path.write_text('{"content": "tor')
    assert cache.get(key) is None
    assert not list((tmp_path / "c").rglob("*.tmp-*"))


def test_fsspec_uri(tmp_path):
    cache = ResponseCache(f"file://{tmp_path}/u")
    cache.put("ab" * 32, {"content": "y"})
    assert ResponseCache(f"file://{tmp_path}/u").get("ab" * 32) == {"content": "y"}


def test_disabled():
    cache = ResponseCache(None)
    cache.put("k", {"content": "z"})
    assert cache.get("k") is None and not cache.enabled
