"""Start a command (``ray start``) with secrets read from the cloud's secret manager.

    python -m embedforge.cloud_secrets aws -- ray start --head ...
    python -m embedforge.cloud_secrets gcp -- ray start --address=...

Used by the start commands of ``cluster/launcher/*.yaml``, instead of sourcing a file on the
shared volume: a file there is readable by every job, and a job that can write it plants
commands that every node runs as shell code at its next ``ray start``. Here each value is read
with the node's cloud identity (its IAM role / service account), put into the environment of
the command, and never written to disk or parsed as shell.

Every node gets the Ray token (``RAY_AUTH_TOKEN``, with ``RAY_AUTH_MODE=token``); a node type
gets the other secrets it needs by naming them in ``EMBEDFORGE_SECRETS`` (set per node type
with ``docker run -e`` in the launcher YAML), e.g. the LLM key only where synthesis runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence

# environment variable -> secret id in AWS Secrets Manager / GCP Secret Manager
SECRET_IDS: dict[str, str] = {
    "RAY_AUTH_TOKEN": "embedforge-ray-auth-token",
    "OPENAI_API_KEY": "embedforge-openai-api-key",
    "EMBEDFORGE_API_KEYS": "embedforge-api-keys",
}
ALWAYS = ("RAY_AUTH_TOKEN",)
SELECT_VAR = "EMBEDFORGE_SECRETS"

Fetch = Callable[[str], str]


def wanted(env: Mapping[str, str]) -> list[str]:
    """The variables this node fetches: the Ray token, plus those ``EMBEDFORGE_SECRETS`` names."""
    names = [n.strip() for n in env.get(SELECT_VAR, "").split(",") if n.strip()]
    unknown = [n for n in names if n not in SECRET_IDS]
    if unknown:
        raise SystemExit(f"error: {SELECT_VAR} names unknown secrets {unknown} "
                         f"(known: {', '.join(SECRET_IDS)})")
    return list(dict.fromkeys([*ALWAYS, *names]))


def secret_env(env: Mapping[str, str], fetch: Fetch) -> dict[str, str]:
    """``env`` plus the fetched secrets and ``RAY_AUTH_MODE=token``."""
    out = dict(env)
    for name in wanted(env):
        value = fetch(SECRET_IDS[name]).strip()
        if not value:
            raise SystemExit(f"error: secret {SECRET_IDS[name]} (for {name}) is empty")
        out[name] = value
    out["RAY_AUTH_MODE"] = "token"
    return out


def aws_fetch(secret_id: str) -> str:
    import boto3

    return boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]


def gcp_fetch(secret_id: str) -> str:
    import google.auth
    from google.cloud import secretmanager

    _, project = google.auth.default()
    name = f"projects/{project}/secrets/{secret_id}/versions/latest"
    return secretmanager.SecretManagerServiceClient().access_secret_version(
        name=name).payload.data.decode("utf-8")


FETCHERS: dict[str, Fetch] = {"aws": aws_fetch, "gcp": gcp_fetch}


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] not in FETCHERS or args[1] != "--":
        raise SystemExit(f"usage: python -m embedforge.cloud_secrets {{{','.join(FETCHERS)}}} "
                         "-- COMMAND [ARGS...]")
    env = secret_env(os.environ, FETCHERS[args[0]])
    os.execvpe(args[2], args[2:], env)


if __name__ == "__main__":
    main()
