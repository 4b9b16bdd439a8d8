"""`python -m embedforge.cloud_secrets PROVIDER -- CMD`: the token and the node type's secrets
end up in CMD's environment, and nothing else (the cloud call replaced by a fake fetch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from embedforge.cloud_secrets import SECRET_IDS, secret_env, wanted


def fake(secret_id: str) -> str:
    return f"value-of-{secret_id}\n"


def test_every_node_gets_the_token_and_only_the_secrets_it_names():
    env = secret_env({"PATH": "/bin"}, fake)
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN"] == "value-of-embedforge-ray-auth-token"   # stripped
    assert "OPENAI_API_KEY" not in env and "EMBEDFORGE_API_KEYS" not in env
    env = secret_env({"EMBEDFORGE_SECRETS": "OPENAI_API_KEY"}, fake)
    assert env["OPENAI_API_KEY"] == "value-of-embedforge-openai-api-key"
    assert "EMBEDFORGE_API_KEYS" not in env
    assert wanted({"EMBEDFORGE_SECRETS": " EMBEDFORGE_API_KEYS, OPENAI_API_KEY"}) == [
        "RAY_AUTH_TOKEN", "EMBEDFORGE_API_KEYS", "OPENAI_API_KEY"]


def test_unknown_names_and_empty_secrets_stop_the_node_with_one_line():
    with pytest.raises(SystemExit, match="unknown secrets"):
        wanted({"EMBEDFORGE_SECRETS": "AWS_SECRET_ACCESS_KEY"})
    with pytest.raises(SystemExit, match=r"secret embedforge-ray-auth-token .* is empty"):
        secret_env({}, lambda _: " ")


def test_the_command_runs_with_the_secrets_in_its_environment():
    code = ("import embedforge.cloud_secrets as m; m.FETCHERS['aws'] = lambda i: 'v-' + i; "
            "m.main(['aws', '--', sys.executable, '-c', "
            "'import os, json; print(json.dumps(dict(os.environ)))'])")
    env = {**os.environ, "EMBEDFORGE_SECRETS": "EMBEDFORGE_API_KEYS"}
    env.pop("RAY_AUTH_TOKEN", None)
    out = subprocess.run([sys.executable, "-c", "import sys; " + code], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    child = json.loads(out.stdout)
    assert child["RAY_AUTH_MODE"] == "token"
    assert child["RAY_AUTH_TOKEN"] == "v-" + SECRET_IDS["RAY_AUTH_TOKEN"]
    assert child["EMBEDFORGE_API_KEYS"] == "v-embedforge-api-keys"
    assert "OPENAI_API_KEY" not in child or child["OPENAI_API_KEY"] == os.environ.get("OPENAI_API_KEY")
    bad = subprocess.run([sys.executable, "-m", "embedforge.cloud_secrets", "azure", "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "usage:" in bad.stderr
