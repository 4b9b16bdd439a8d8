"""The cluster configs are secure by default, checked on every manifest without a cluster.

* Token authentication on every Ray cluster: KubeRay ``authOptions`` (a generated token in a
  Secret), and on launcher nodes ``ray start`` wrapped by ``embedforge.cloud_secrets`` (the token
  from the cloud's secret manager, ``RAY_AUTH_MODE=token``); no node sources a file.
* Ray's ports stay on the cluster network: ClusterIP head services, no host network or host
  ports, the launcher dashboard on 127.0.0.1, and NetworkPolicies that admit only the cluster's
  own pods and named peers (the operator, Prometheus, the ingress for port 8000).
* Egress: every pod is selected by an Egress policy; it reaches DNS, the cluster's own pods
  and named CIDRs on named ports only; the LLM provider only from the pods holding the LLM key,
  the Kubernetes API only from the autoscaling heads.
* Hardened pods: non-root, no privilege escalation, all capabilities dropped, a read-only root
  filesystem with emptyDirs for /tmp and Ray's temp dir, seccomp, a dedicated ServiceAccount
  without a mounted token (only the autoscaler sidecar gets one).
* API keys only on the pods that use them, only from Secrets.

Each check returns problems, so the tests at the bottom show it catches a broken copy.
"""

from __future__ import annotations

import copy
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from embedforge.cloud_secrets import SECRET_IDS, SELECT_VAR
from embedforge.serve.config import ServeConfig
from embedforge.synth.config import SynthConfig
from test_cluster_configs import (
    LAUNCHERS,
    RAYJOBS,
    SECRET_NAME,
    cluster_spec,
    containers,
    env_of,
    group_resources,
    ids,
    kuberay_docs,
    launcher,
    parse_entrypoint,
    pod_groups,
    ray_objects,
    replica_groups,
    serve_app,
)

PART_OF = {"app.kubernetes.io/part-of": "embedforge"}
SA_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
# ports that run whatever is submitted to them: never admitted from outside the cluster's pods
# (the operator reaches the dashboard through 8265, which it must)
CONTROL_PORTS = {6379, 10001}
SERVE_PORT = 8000
RAY_TEMP_DIR = "/tmp/ray"   # Ray's default temp dir: session files, logs, spilled objects
NAMESPACE_KEY = "kubernetes.io/metadata.name"


def objects_of(kind: str) -> list[dict]:
    return [d for _, d in kuberay_docs() if d.get("kind") == kind]


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(name, pod template) of every pod a Ray object creates: head, worker groups, submitter."""
    out = [(name, g["template"]) for name, g in pod_groups(cluster_spec(doc))]
    submitter = doc["spec"].get("submitterPodTemplate")
    if doc["kind"] == "RayJob":
        out.append(("submitter", submitter or {}))
    return out


# ------------------------------------------------------------------------------ auth
def auth_problems(doc: dict) -> list[str]:
    spec = cluster_spec(doc)
    out = []
    if (spec.get("authOptions") or {}).get("mode") != "token":
        out.append("authOptions.mode is not token")
    for name, tpl in pod_templates(doc):
        for c in (tpl.get("spec") or {}).get("containers") or []:
            mode = (env_of(c).get("RAY_AUTH_MODE") or {}).get("value")
            if mode not in (None, "token"):
                out.append(f"{name}: RAY_AUTH_MODE={mode}")
    return out


# ------------------------------------------------------------------------------ network
def exposure_problems(doc: dict) -> list[str]:
    spec = cluster_spec(doc)
    head = spec["headGroupSpec"]
    out = []
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        out.append(f"head service type {head['serviceType']} (only ClusterIP stays inside)")
    if head.get("enableIngress"):
        out.append("enableIngress exposes the dashboard")
    for name, tpl in pod_templates(doc):
        pod = tpl.get("spec") or {}
        if pod.get("hostNetwork"):
            out.append(f"{name}: hostNetwork")
        for c in pod.get("containers") or []:
            out += [f"{name}: hostPort {p['hostPort']}" for p in c.get("ports") or []
                    if p.get("hostPort")]
    return out


def _peer_problem(peer: dict, ports: set[int]) -> str | None:
    """A peer is our own pods, or pods/everything of one namespace named by its name label."""
    if "ipBlock" in peer:
        return f"ipBlock {peer['ipBlock']}"
    pods = (peer.get("podSelector") or {}).get("matchLabels")
    if "namespaceSelector" not in peer:
        return None if pods and PART_OF.items() <= pods.items() else f"pod selector {pods}"
    ns = (peer["namespaceSelector"] or {}).get("matchLabels") or {}
    if set(ns) != {NAMESPACE_KEY}:
        return f"namespace selector {peer['namespaceSelector']} names no single namespace"
    if not ports or ports & CONTROL_PORTS:
        return f"namespace {ns[NAMESPACE_KEY]} reaches ports {sorted(ports) or 'all'}"
    return None


EGRESS_LABEL = "embedforge.io/egress"   # names the destination of a policy with ipBlocks
DNS_NAMESPACE = "kube-system"


def selecting(policies: list[dict], labels: dict, kind: str) -> list[dict]:
    """The policies of ``kind`` (Ingress/Egress) whose pod selector matches ``labels``."""
    return [p for p in policies if kind in p["spec"].get("policyTypes", [])
            and (p["spec"]["podSelector"].get("matchLabels") or {})
            and (p["spec"]["podSelector"].get("matchLabels") or {}).items() <= labels.items()]


def _egress_peer_problem(pol: dict, peer: dict, ports: set) -> str | None:
    """Egress goes to our own pods, one named namespace on named ports, or a named CIDR (a
    policy labelled with its destination) on named ports: never everywhere."""
    if "ipBlock" in peer:
        cidr = peer["ipBlock"]["cidr"]
        if int(cidr.split("/")[1]) < 8 or cidr in ("0.0.0.0/0", "::/0"):
            return f"egress to {cidr}"
        if not ports:
            return f"egress to {cidr} on every port"
        if not (pol["metadata"].get("labels") or {}).get(EGRESS_LABEL):
            return f"egress to {cidr} in a policy without an {EGRESS_LABEL} label naming it"
        return None
    return _peer_problem(peer, ports)


def network_policy_problems(policies: list[dict], docs: list[dict]) -> list[str]:
    """Every pod is selected by an ingress and an egress policy, every rule names its peers,
    outside peers get only the ports they need; the endpoint's port comes from a named
    ingress; DNS, the LLM provider and the Kubernetes API are reached only by whom needs them."""
    out = []
    for pol in policies:
        spec, name = pol["spec"], pol["metadata"]["name"]
        types = spec.get("policyTypes", [])
        if not set(types) & {"Ingress", "Egress"}:
            out.append(f"{name}: no policyTypes")
        for rule in spec.get("ingress") or ([{}] if "Ingress" in types else []):
            peers = rule.get("from") or []
            if not peers:
                out.append(f"{name}: a rule without `from` admits everyone")
            ports = {p.get("port") for p in rule.get("ports") or []}
            out += [f"{name}: {why}" for p in peers if (why := _peer_problem(p, ports))]
        for rule in spec.get("egress") or ([{}] if "Egress" in types else []):
            peers = rule.get("to") or []
            if not peers:
                out.append(f"{name}: an egress rule without `to` reaches everywhere")
            ports = {p.get("port") for p in rule.get("ports") or []}
            out += [f"{name}: {why}" for p in peers if (why := _egress_peer_problem(pol, p, ports))]

    def reaches(labels: dict, destination: str) -> bool:
        return any((p["metadata"].get("labels") or {}).get(EGRESS_LABEL) == destination
                   for p in selecting(policies, labels, "Egress"))

    def has_dns(labels: dict) -> bool:
        for p in selecting(policies, labels, "Egress"):
            for rule in p["spec"].get("egress") or []:
                ns = [(t.get("namespaceSelector") or {}).get("matchLabels", {}).get(NAMESPACE_KEY)
                      for t in rule.get("to") or []]
                if DNS_NAMESPACE in ns and {"protocol": "UDP", "port": 53} in rule.get("ports", []):
                    return True
        return False

    llm = SynthConfig.model_fields["llm"].default_factory().api_key_env
    for doc in docs:
        spec = cluster_spec(doc)
        for name, tpl in pod_templates(doc):
            labels = (tpl.get("metadata") or {}).get("labels") or {}
            where = f"{doc['kind']} {name}"
            if not PART_OF.items() <= labels.items() or not selecting(policies, labels, "Ingress"):
                out.append(f"{where}: pod not selected by a NetworkPolicy (labels {labels})")
            if not selecting(policies, labels, "Egress"):
                out.append(f"{where}: egress unrestricted (no Egress NetworkPolicy selects it)")
            elif not has_dns(labels):
                out.append(f"{where}: no DNS egress (UDP 53 to {DNS_NAMESPACE})")
            holds_key = any(llm in env_of(c) for c in (tpl.get("spec") or {}).get("containers") or [])
            if reaches(labels, "llm-provider") != holds_key:
                out.append(f"{where}: LLM provider egress {reaches(labels, 'llm-provider')} but "
                           f"holds the LLM key {holds_key}")
            autoscaler = name == "head" and bool(spec.get("enableInTreeAutoscaling"))
            if reaches(labels, "kube-api") != autoscaler:
                out.append(f"{where}: Kubernetes API egress {reaches(labels, 'kube-api')} but "
                           f"runs the autoscaler {autoscaler}")
    for doc in docs:
        if doc["kind"] != "RayService":
            continue
        cfg = ServeConfig.model_validate(serve_app(doc)["args"])
        for name, group in replica_groups(cluster_spec(doc), cfg):
            labels = group["template"].get("metadata", {}).get("labels") or {}
            admitted = [r for p in selecting(policies, labels, "Ingress")
                        for r in p["spec"].get("ingress") or []
                        if SERVE_PORT in {q.get("port") for q in r.get("ports") or []}
                        and any("namespaceSelector" in f for f in r.get("from") or [])]
            if not admitted:
                out.append(f"RayService {name}: port {SERVE_PORT} admitted from no named ingress")
    return out


# ------------------------------------------------------------------------------ pods
@cache
def service_accounts() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in objects_of("ServiceAccount")}


def hardening_problems(doc: dict) -> list[str]:
    out = []
    spec = cluster_spec(doc)
    for name, tpl in pod_templates(doc):
        pod = tpl.get("spec") or {}
        sc = pod.get("securityContext") or {}
        if sc.get("runAsNonRoot") is not True or sc.get("runAsUser") in (None, 0):
            out.append(f"{name}: runAsNonRoot/runAsUser (got {sc})")
        if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            out.append(f"{name}: seccompProfile RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            out.append(f"{name}: automountServiceAccountToken must be false")
        sa = service_accounts().get(pod.get("serviceAccountName"))
        if sa is None or sa.get("automountServiceAccountToken") is not False:
            out.append(f"{name}: serviceAccountName {pod.get('serviceAccountName')!r} is not an "
                       "account of service-account.yaml without a mounted token")
        group_containers = pod.get("containers") or []
        if not group_containers:
            out.append(f"{name}: no containers")
        scratch = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
        for c in group_containers + (pod.get("initContainers") or []):
            out += [f"{name}/{c.get('name')}: {p}" for p in _container_problems(c)]
            writable = {m["mountPath"] for m in c.get("volumeMounts") or [] if m["name"] in scratch}
            needed = {"/tmp"} | ({RAY_TEMP_DIR} if name != "submitter" else set())
            out += [f"{name}/{c.get('name')}: no emptyDir at {path} (the root filesystem is "
                    "read-only)" for path in sorted(needed - writable)]
            out += [f"{name}/{c.get('name')}: mounts a service account token"
                    for m in c.get("volumeMounts") or [] if m["mountPath"] == SA_TOKEN_PATH]
    auto = spec.get("autoscalerOptions") or {}
    if spec.get("enableInTreeAutoscaling"):
        out += [f"autoscaler: {p}" for p in _container_problems(auto)]
    return out


def _container_problems(c: dict) -> list[str]:
    sc = c.get("securityContext") or {}
    out = []
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append("allowPrivilegeEscalation must be false")
    if sc.get("readOnlyRootFilesystem") is not True:
        out.append("readOnlyRootFilesystem must be true")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        out.append("capabilities must drop ALL")
    if sc.get("privileged") or (sc.get("capabilities") or {}).get("add"):
        out.append("privileged / added capabilities")
    if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
        out.append("runs as root")
    return out


# ------------------------------------------------------------------------------ secrets
def allowed_secrets(doc: dict, name: str, group: dict) -> set[str]:
    """Secret env vars a group may carry: the LLM key where synthesis runs (its drivers on the
    head, its actors on CPU workers), the endpoint's keys where a replica can run."""
    llm = SynthConfig.model_fields["llm"].default_factory().api_key_env
    if doc["kind"] == "RayJob":
        script, _ = parse_entrypoint(doc["spec"]["entrypoint"])
        return {llm} if script == "jobs/synthesize.py" else set()
    if doc["kind"] == "RayCluster":
        return {llm} if name == "head" or group_resources(group)[1] == 0 else set()
    cfg = ServeConfig.model_validate(serve_app(doc)["args"])
    return {cfg.api_key_env} if name in dict(replica_groups(cluster_spec(doc), cfg)) else set()


def secret_problems(doc: dict) -> list[str]:
    out = []
    for name, group in pod_groups(cluster_spec(doc)):
        allowed = allowed_secrets(doc, name, group)
        for c in containers(group):
            for env in c.get("env") or []:
                if not SECRET_NAME.search(env["name"]):
                    continue
                if "secretKeyRef" not in (env.get("valueFrom") or {}):
                    out.append(f"{name}: {env['name']} not from a secretKeyRef")
                if env["name"] not in allowed:
                    out.append(f"{name}: {env['name']} on a pod that does not use it")
    submitter = doc["spec"].get("submitterPodTemplate") or {}
    for c in (submitter.get("spec") or {}).get("containers") or []:
        out += [f"submitter: {e['name']}" for e in c.get("env") or [] if SECRET_NAME.search(e["name"])]
    return out


# ------------------------------------------------------------------------------ launcher
SOURCING = re.compile(r"(^|[;&|(]\s*)(\.|source)\s+\S|set\s+-a")


def node_secrets(cfg: dict) -> dict[str, set[str]]:
    """Node type -> the secrets it fetches besides the Ray token (EMBEDFORGE_SECRETS)."""

    def names(options: list[str]) -> set[str]:
        out: set[str] = set()
        for opt in options:
            m = re.fullmatch(rf"-e\s+{SELECT_VAR}=(\S+)", opt.strip())
            if m:
                out |= set(m.group(1).split(","))
        return out

    docker = cfg.get("docker") or {}
    base = names(docker.get("run_options") or [])
    out = {}
    for node, t in cfg["available_node_types"].items():
        extra = docker.get("head_run_options") if node == cfg["head_node_type"] else \
            (t.get("docker") or {}).get("worker_run_options", docker.get("worker_run_options"))
        out[node] = base | names(extra or [])
    return out


IDENTITIES = Path(__file__).resolve().parents[1] / "cluster" / "identities.yaml"
BOOT_INSTALL = re.compile(r"\b(pip3?|conda|mamba|uv pip)\s+install\b|\bapt(-get)?\s+install\b")


@cache
def identities() -> dict[str, set[str]]:
    """Identity name -> the secret ids it may read (cluster/identities.yaml)."""
    return {k: set(v) for k, v in yaml.safe_load(IDENTITIES.read_text()).items()}


def node_identity(provider: str, node_config: dict) -> str | None:
    """The IAM instance profile (AWS) or service account (GCP) a node type runs as."""
    if provider == "aws":
        profile = node_config.get("IamInstanceProfile") or {}
        ref = profile.get("Arn") or profile.get("Name") or ""
        return ref.rsplit("/", 1)[-1] or None
    accounts = node_config.get("serviceAccounts") or []
    return accounts[0]["email"].split("@")[0] if accounts else None


def unpinned_installs(cmd: str) -> bool:
    """A package install at boot that is not pinned by constraints.txt (or a requirements file
    with hashes): what it installs changes with the day the node boots."""
    return bool(BOOT_INSTALL.search(cmd)) and not re.search(
        r"(-c|--constraint)\s+\S*constraints\S*\.txt|--require-hashes", cmd)


def launcher_security_problems(cfg: dict) -> list[str]:
    out = []
    provider = cfg["provider"]["type"]
    commands = {k: cfg.get(k) or [] for k in ("initialization_commands", "setup_commands",
                                              "head_setup_commands", "worker_setup_commands",
                                              "head_start_ray_commands", "worker_start_ray_commands")}
    for t in cfg["available_node_types"].values():
        commands.setdefault("node types", []).extend(
            (t.get("worker_setup_commands") or []) + (t.get("initialization_commands") or []))
    for key, cmds in commands.items():
        for cmd in cmds:
            if unpinned_installs(cmd):
                out.append(f"{key}: installs unpinned packages at boot: {cmd!r}")
            if SOURCING.search(cmd):
                out.append(f"{key}: sources a file as shell code: {cmd!r}")
            if re.search(r"\.secrets|\.env\b", cmd):
                out.append(f"{key}: a secrets file: {cmd!r}")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in commands[key] if "ray start" in c]
        if not starts:
            out.append(f"{key}: no ray start")
        for cmd in starts:
            args = shlex.split(cmd.replace(";", " ; "))
            want = ["python", "-m", "embedforge.cloud_secrets", provider, "--", "ray", "start"]
            i = args.index("ray") if "ray" in args else -1
            if args[i - len(want) + 2:i + 2] != want:
                out.append(f"{key}: ray start not run through `python -m embedforge.cloud_secrets "
                           f"{provider} --` (token auth and the token): {cmd!r}")
            host = [a.split("=", 1)[1] for a in args if a.startswith("--dashboard-host=")]
            if host and host[0] not in ("127.0.0.1", "localhost"):
                out.append(f"{key}: dashboard on {host[0]} (keep it on 127.0.0.1, tunnel to it)")
    for node, names in node_secrets(cfg).items():
        t = cfg["available_node_types"][node]
        who = node_identity(provider, t.get("node_config") or {})
        fetched = {SECRET_IDS[n] for n in names | {"RAY_AUTH_TOKEN"} if n in SECRET_IDS}
        if who is None:
            out.append(f"{node}: no cloud identity of its own (IamInstanceProfile / serviceAccounts)")
        elif who not in identities():
            out.append(f"{node}: identity {who} is not in {IDENTITIES.name}")
        elif identities()[who] != fetched:
            out.append(f"{node}: identity {who} reads {sorted(identities()[who])} but the node "
                       f"fetches {sorted(fetched)}")
        gpus = t["resources"].get("GPU", 0)
        unknown = names - set(SECRET_IDS)
        if unknown:
            out.append(f"{node}: unknown secrets {sorted(unknown)}")
        if "OPENAI_API_KEY" in names and gpus:
            out.append(f"{node}: the LLM key on a GPU node (synthesis runs on CPU workers)")
        if "EMBEDFORGE_API_KEYS" in names and not gpus:
            out.append(f"{node}: the endpoint's keys on a node that hosts no replica")
    sg = (cfg["provider"].get("security_group") or {}).get("IpPermissions") or []
    for perm in sg:
        if any(r.get("CidrIp") == "0.0.0.0/0" for r in perm.get("IpRanges") or []) and \
                perm.get("FromPort") != 22:
            out.append(f"security group opens ports {perm.get('FromPort')}-{perm.get('ToPort')}")
    return out


# ------------------------------------------------------------------------------ tests
@pytest.mark.parametrize(("name", "doc"), ray_objects(), ids=ids(ray_objects()))
def test_every_ray_cluster_requires_its_token(name, doc):
    assert auth_problems(doc) == []


@pytest.mark.parametrize(("name", "doc"), ray_objects(), ids=ids(ray_objects()))
def test_ray_ports_stay_on_the_cluster_network(name, doc):
    assert exposure_problems(doc) == []


def test_network_policies_admit_only_the_cluster_and_named_peers():
    policies = objects_of("NetworkPolicy")
    assert policies, "cluster/kuberay/ must hold the NetworkPolicies"
    assert network_policy_problems(policies, [d for _, d in ray_objects()]) == []


@pytest.mark.parametrize(("name", "doc"), ray_objects(), ids=ids(ray_objects()))
def test_pods_are_hardened_without_a_service_account_token(name, doc):
    assert hardening_problems(doc) == []


@pytest.mark.parametrize(("name", "doc"), ray_objects(), ids=ids(ray_objects()))
def test_keys_only_on_the_pods_that_use_them_from_secrets(name, doc):
    assert secret_problems(doc) == []


def test_the_pods_that_use_keys_have_them():
    llm = SynthConfig.model_fields["llm"].default_factory().api_key_env
    synth = next(d for _, d in RAYJOBS if "synthesize.py" in d["spec"]["entrypoint"])
    for name, group in pod_groups(cluster_spec(synth)):
        assert llm in env_of(group["template"]["spec"]["containers"][0]), name


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_nodes_require_the_token_and_fetch_only_their_secrets(path):
    cfg = launcher(path)
    assert launcher_security_problems(cfg) == []
    secrets = node_secrets(cfg)
    assert "OPENAI_API_KEY" in secrets[cfg["head_node_type"]]   # the synthesis driver
    assert any("EMBEDFORGE_API_KEYS" in s for s in secrets.values()), "no node can serve"


# ------------------------------------------------------------------------------ the checks can fail
def real(kind: str) -> dict:
    return copy.deepcopy(ray_objects(kind)[0][1])


def first_worker(doc: dict) -> dict[str, Any]:
    return cluster_spec(doc)["workerGroupSpecs"][0]["template"]


def test_checks_catch_auth_off_exposure_and_a_root_pod():
    doc = real("RayCluster")
    del cluster_spec(doc)["authOptions"]
    assert auth_problems(doc) == ["authOptions.mode is not token"]
    doc = real("RayJob")
    cluster_spec(doc)["headGroupSpec"]["serviceType"] = "LoadBalancer"
    first_worker(doc)["spec"]["hostNetwork"] = True
    assert len(exposure_problems(doc)) == 2
    doc = real("RayService")
    first_worker(doc)["spec"]["securityContext"] = {"runAsUser": 0}
    first_worker(doc)["spec"]["automountServiceAccountToken"] = True
    first_worker(doc)["spec"]["containers"][0]["securityContext"] = {}
    problems = hardening_problems(doc)
    assert any("runAsNonRoot" in p for p in problems)
    assert any("automountServiceAccountToken" in p for p in problems)
    assert any("drop ALL" in p for p in problems)
    doc = real("RayJob")
    del doc["spec"]["submitterPodTemplate"]
    assert any(p.startswith("submitter:") for p in hardening_problems(doc))


def test_checks_catch_open_policies_and_unselected_pods():
    policies = copy.deepcopy(objects_of("NetworkPolicy"))
    docs = [d for _, d in ray_objects()]
    wide = copy.deepcopy(policies)
    wide[0]["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    wide[0]["spec"]["ingress"].append({"ports": [{"port": 8265}]})
    wide[0]["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}]})
    problems = network_policy_problems(wide, docs)
    assert any("ipBlock" in p for p in problems) and any("without `from`" in p for p in problems)
    assert any("names no single namespace" in p for p in problems)
    doc = real("RayJob")
    first_worker(doc)["metadata"]["labels"] = {"app": "other"}
    assert any("not selected" in p for p in network_policy_problems(policies, [doc]))
    no_ingress = [p for p in policies if "serve" not in p["metadata"]["name"]]
    assert any(f"port {SERVE_PORT}" in p for p in
               network_policy_problems(no_ingress, [real("RayService")]))


def test_checks_catch_open_egress_and_a_writable_root():
    policies = copy.deepcopy(objects_of("NetworkPolicy"))
    docs = [d for _, d in ray_objects()]
    wide = copy.deepcopy(policies)
    wide[0]["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    wide[0]["spec"]["egress"].append({"ports": [{"port": 443}]})
    wide[0]["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "10.0.0.0/16"}}],
                                      "ports": [{"port": 443}]})
    problems = network_policy_problems(wide, docs)
    assert any("egress to 0.0.0.0/0" in p for p in problems)
    assert any("without `to` reaches everywhere" in p for p in problems)
    assert any("without an embedforge.io/egress label" in p for p in problems)
    ingress_only = [p for p in policies if "Ingress" in p["spec"]["policyTypes"]]
    for p in ingress_only:
        p["spec"]["policyTypes"] = ["Ingress"]
    assert any("egress unrestricted" in p for p in network_policy_problems(ingress_only, docs))
    # the LLM egress on a pod without the key (training), and missing where the key is
    doc = real("RayJob")
    first_worker(doc)["metadata"]["labels"]["embedforge.io/llm-client"] = "true"
    problems = network_policy_problems(policies, [doc])
    assert any("LLM provider egress True but holds the LLM key False" in p for p in problems)
    doc = real("RayCluster")
    del cluster_spec(doc)["headGroupSpec"]["template"]["metadata"]["labels"]["embedforge.io/llm-client"]
    assert any("LLM provider egress False but holds the LLM key True" in p
               for p in network_policy_problems(policies, [doc]))
    doc = real("RayService")
    container = first_worker(doc)["spec"]["containers"][0]
    container["securityContext"] = {**container["securityContext"], "readOnlyRootFilesystem": False}
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["mountPath"] != "/tmp/ray"]
    problems = hardening_problems(doc)
    assert any("readOnlyRootFilesystem must be true" in p for p in problems)
    assert any("no emptyDir at /tmp/ray" in p for p in problems)


def test_checks_catch_keys_on_the_wrong_pods_and_literal_values():
    doc = real("RayJob")   # mine or train: no keys at all
    if "synthesize" in doc["spec"]["entrypoint"]:
        doc = copy.deepcopy(next(d for _, d in RAYJOBS if "synthesize" not in d["spec"]["entrypoint"]))
    first_worker(doc)["spec"]["containers"][0].setdefault("env", []).append(
        {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k"}}})
    assert any("does not use it" in p for p in secret_problems(doc))
    doc = real("RayService")
    cluster_spec(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "EMBEDFORGE_API_KEYS", "value": "key1"}]
    problems = secret_problems(doc)
    assert any("not from a secretKeyRef" in p for p in problems)
    assert any("head: EMBEDFORGE_API_KEYS on a pod that does not use it" in p for p in problems)


def test_checks_catch_boot_installs_and_a_shared_identity():
    cfg = copy.deepcopy(launcher(LAUNCHERS[0]))
    cfg["head_setup_commands"] = ['pip install "boto3>=1.34"']
    cfg["setup_commands"] = ["pip install -c constraints.txt boto3"]   # pinned: allowed
    problems = launcher_security_problems(cfg)
    assert [p for p in problems if "unpinned" in p] == [
        "head_setup_commands: installs unpinned packages at boot: 'pip install \"boto3>=1.34\"'"]
    for path in LAUNCHERS:   # the training nodes given the serving nodes' identity
        cfg = copy.deepcopy(launcher(path))
        types = cfg["available_node_types"]
        serve = next(t for t in types.values() if "EMBEDFORGE_API_KEYS" in str(t.get("docker")))
        train = next(t for n, t in types.items() if t["resources"].get("GPU")
                     and not (t.get("docker") or {}).get("worker_run_options"))
        for key in ("IamInstanceProfile", "serviceAccounts"):
            if key in serve["node_config"]:
                train["node_config"][key] = serve["node_config"][key]
        assert any("identity embedforge-gpu-serve reads" in p for p in launcher_security_problems(cfg))
        del types[cfg["head_node_type"]]["node_config"][
            "IamInstanceProfile" if "aws" in path.name else "serviceAccounts"]
        assert any("no cloud identity" in p for p in launcher_security_problems(cfg))


def test_checks_catch_a_sourced_secrets_file_and_a_public_dashboard():
    cfg = copy.deepcopy(launcher(LAUNCHERS[0]))
    cfg["worker_start_ray_commands"] = [
        "ray stop", "set -a; . /mnt/embedforge/.secrets/cluster.env; set +a; "
        "ray start --address=$RAY_HEAD_IP:6379"]
    cfg["head_start_ray_commands"] = [c.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
                                      for c in cfg["head_start_ray_commands"]]
    problems = launcher_security_problems(cfg)
    assert any("sources a file" in p for p in problems)
    assert any("not run through" in p for p in problems)
    assert any("dashboard on 0.0.0.0" in p for p in problems)
    cfg = copy.deepcopy(launcher(LAUNCHERS[0]))
    gpu = next(n for n, t in cfg["available_node_types"].items() if t["resources"].get("GPU"))
    cfg["available_node_types"][gpu]["docker"] = {
        "worker_run_options": [f"-e {SELECT_VAR}=OPENAI_API_KEY"]}
    assert any("LLM key on a GPU node" in p for p in launcher_security_problems(cfg))
