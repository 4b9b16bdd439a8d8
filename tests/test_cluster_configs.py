"""The cluster configs deploy what they claim to, checked without a cluster or network.

Covers cluster/launcher/*.yaml (Ray's own JSON schema from the installed ray package),
cluster/kuberay/*.yaml (the ray.io/v1 fields KubeRay needs, and that each RayJob runs a job
script of this repo with a config that validates), the RayService's Serve application
(Ray's ServeDeploySchema and embedforge's ServeConfig, the same app as `serve deploy`), and
cluster/docker/Dockerfile (every manifest runs the one image it builds, which installs this
project). Each check is a function returning problems, so the tests at the bottom can show it
catches a broken copy of a real manifest.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import importlib
import io
import json
import posixpath
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

import embedforge
from embedforge.config import ConfigError, JobConfig, parse_config
from embedforge.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
DOCKERIGNORE = CLUSTER / "docker" / "Dockerfile.dockerignore"
SERVE_YAML = CLUSTER / "serve" / "embedforge-serve.yaml"
README = CLUSTER / "README.md"
LAUNCHERS = sorted((CLUSTER / "launcher").glob("*.yaml"))
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
ALL_YAML = sorted(CLUSTER.rglob("*.yaml")) + sorted((ROOT / "jobs" / "configs").glob("cluster-*.yaml"))

# Job script -> the config class its main() parses (jobs/<x>.py: parse_config(Cls, argv)),
# imported when a RayJob runs that script.
JOB_CONFIGS: dict[str, str] = {
    "jobs/prepare.py": "embedforge.prepare:PrepareConfig",
    "jobs/synthesize.py": "embedforge.synth.config:SynthConfig",
    "jobs/mine.py": "embedforge.mine.config:MineConfig",
    "jobs/train.py": "embedforge.train.config:TrainConfig",
    "jobs/merge.py": "embedforge.train.merge_job:MergeConfig",
    "jobs/evaluate.py": "embedforge.eval.config:EvalConfig",
    "jobs/serve.py": "embedforge.serve.config:ServeConfig",
    "jobs/pipeline.py": "embedforge.pipeline.config:PipelineConfig",
}
# Config fields naming stage folders: on a cluster they must be on the shared volume, or the
# next stage (another pod, another job) never sees them.
SHARED_PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "jobs/prepare.py": ("output",),
    "jobs/synthesize.py": ("input", "output", "cache"),
    "jobs/mine.py": ("input", "output", "cache"),
    "jobs/train.py": ("output", "stage1.inputs", "stage2.inputs"),
    "jobs/evaluate.py": ("output",),
}
SHARED_MOUNT = "/mnt/embedforge"
RAY_KINDS = ("RayCluster", "RayJob", "RayService")

# Required fields of the KubeRay ray.io/v1 API (ray-operator/apis/ray/v1/*_types.go: fields
# without `omitempty`, i.e. the CRD schema's `required`), plus the optional ones this platform
# relies on (marked *): without them a RayJob keeps its GPUs after the job, or an autoscaling
# group has no bounds. Dotted paths; "[]" means every item of a list.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "RayClusterSpec": (
        "headGroupSpec",
        "headGroupSpec.rayStartParams",
        "headGroupSpec.template",
        "headGroupSpec.template.spec.containers",
        "rayVersion",                               # * selects the submitter's `ray` CLI
        "workerGroupSpecs[].groupName",
        "workerGroupSpecs[].replicas",              # * the number of pods a job cluster gets
        "workerGroupSpecs[].minReplicas",
        "workerGroupSpecs[].maxReplicas",
        "workerGroupSpecs[].rayStartParams",
        "workerGroupSpecs[].template",
        "workerGroupSpecs[].template.spec.containers",
    ),
    "RayCluster": ("spec",),
    "RayJob": (
        "spec.entrypoint",
        "spec.rayClusterSpec",
        "spec.runtimeEnvYAML",                      # *
        "spec.shutdownAfterJobFinishes",            # *
        "spec.ttlSecondsAfterFinished",             # *
    ),
    "RayService": ("spec.serveConfigV2", "spec.rayClusterConfig"),
    "Container": ("name", "image"),
}
# runtime_env keys a RayJob may use: the image carries the code and every dependency, so only
# environment variables belong here (a local working_dir would be uploaded from the submitter).
RUNTIME_ENV_KEYS = {"env_vars", "config"}
SECRET_NAME = re.compile(r"(KEYS?|TOKEN|SECRET|PASSWORD)$|API_?KEY", re.IGNORECASE)
# GPUs per AWS instance type named in cluster/launcher/aws.yaml (Ray's `resources` must agree).
AWS_GPUS = {"p4d.24xlarge": 8, "p4de.24xlarge": 8, "p5.48xlarge": 8, "g5.xlarge": 1,
            "g5.12xlarge": 4, "g5.48xlarge": 8, "g6.12xlarge": 4, "g6e.12xlarge": 4}


# ---------------------------------------------------------------------------------- loading
def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@cache
def kuberay_docs() -> tuple[tuple[str, dict], ...]:
    out = []
    for path in KUBERAY_FILES:
        for doc in load_all(path):
            out.append((path.name, doc))
    return tuple(out)


def ray_objects(kind: str | None = None) -> list[tuple[str, dict]]:
    return [(n, d) for n, d in kuberay_docs()
            if d.get("kind") in RAY_KINDS and (kind is None or d["kind"] == kind)]


def ids(objs: list[tuple[str, dict]]) -> list[str]:
    return [f"{name}:{doc['kind']}" for name, doc in objs]


@cache
def launcher(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@cache
def serve_deploy_yaml() -> dict:
    return yaml.safe_load(SERVE_YAML.read_text())


@cache
def shared_claim() -> str:
    """Name of the ReadWriteMany PVC in cluster/kuberay/ (the stages' shared volume)."""
    claims = [d for _, d in kuberay_docs() if d.get("kind") == "PersistentVolumeClaim"]
    assert len(claims) == 1, "cluster/kuberay/ must define exactly one PersistentVolumeClaim"
    assert "ReadWriteMany" in claims[0]["spec"]["accessModes"], "pods on many nodes share it"
    return claims[0]["metadata"]["name"]


@cache
def project_image() -> str:
    """The tag cluster/README.md builds cluster/docker/Dockerfile as."""
    m = re.search(r"docker build -f cluster/docker/Dockerfile -t (\S+) \.", README.read_text())
    assert m, "cluster/README.md must show `docker build -f cluster/docker/Dockerfile -t IMAGE .`"
    return m.group(1)


PINNED = re.compile(r"(?P<image>[^@\s]+)@sha256:[0-9a-f]{64}")


@cache
def pinned_image() -> str:
    """The one digest-pinned reference (``TAG@sha256:<64 hex>``) of the image the README
    builds, as the launcher config names it: every manifest must run exactly this."""
    images = launcher_images(launcher(LAUNCHERS[0]))
    assert len(images) == 1, images
    (image,) = images
    m = PINNED.fullmatch(image)
    assert m and m.group("image") == project_image(), \
        f"{image} is not {project_image()}@sha256:<digest> (pin the image by digest)"
    return image


# ---------------------------------------------------------------------------------- helpers
def get_path(obj: Any, dotted: str) -> list[Any]:
    """Values at a dotted path ("a.b[].c"); a missing key yields no value for that branch."""
    values = [obj]
    for part in dotted.split("."):
        each = part.endswith("[]")
        key = part[:-2] if each else part
        nxt = []
        for v in values:
            if not isinstance(v, dict) or key not in v or v[key] is None:
                nxt.append(_MISSING)
                continue
            if each:
                nxt.extend(v[key] if isinstance(v[key], list) else [_MISSING])
            else:
                nxt.append(v[key])
        values = nxt
    return values


_MISSING = object()


def missing_fields(obj: dict, kind: str) -> list[str]:
    return [f"{kind}: {path}" for path in REQUIRED_FIELDS[kind]
            if any(v is _MISSING for v in get_path(obj, path))]


def cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
            "RayService": spec.get("rayClusterConfig")}[doc["kind"]]


def pod_groups(spec: dict) -> list[tuple[str, dict]]:
    """("head", headGroupSpec) then (groupName, workerGroupSpec) for each worker group."""
    return [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec.get("workerGroupSpecs") or []]


def containers(group: dict) -> list[dict]:
    pod = group["template"]["spec"]
    return list(pod.get("containers") or []) + list(pod.get("initContainers") or [])


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]   # KubeRay runs Ray in the first one


def cpu_quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def group_resources(group: dict) -> tuple[float, float]:
    """(CPUs, GPUs) Ray advertises for one pod of the group (rayStartParams win, else limits)."""
    params = group.get("rayStartParams") or {}
    limits = (ray_container(group).get("resources") or {}).get("limits") or {}
    cpus = float(params["num-cpus"]) if "num-cpus" in params else cpu_quantity(limits.get("cpu", 0))
    gpus = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    return cpus, gpus


def pods(spec: dict, name: str, group: dict) -> int:
    """Pods of a group the job can count on: all it may scale to, or its fixed size."""
    if name == "head":
        return 1
    return group["maxReplicas"] if spec.get("enableInTreeAutoscaling") else group["replicas"]


def capacity(spec: dict, cpus_per: float, gpus_per: float) -> int:
    """How many units of (cpus_per CPU, gpus_per GPU) fit on the cluster's pods."""
    total = 0
    for name, group in pod_groups(spec):
        cpus, gpus = group_resources(group)
        fit = [cpus // cpus_per if cpus_per else float("inf"),
               gpus // gpus_per if gpus_per else float("inf")]
        total += pods(spec, name, group) * int(min(fit))
    return total


def pvc_location(spec: dict, group: dict, path: str) -> tuple[str, str] | None:
    """(claim, path inside the claim) where `path` lives for the group's Ray container."""
    volumes = {v["name"]: v for v in group["template"]["spec"].get("volumes") or []}
    best = None
    for m in ray_container(group).get("volumeMounts") or []:
        mount = m["mountPath"].rstrip("/")
        if (path == mount or path.startswith(mount + "/")) and (
                best is None or len(mount) > len(best["mountPath"].rstrip("/"))):
            best = m
    if best is None or "persistentVolumeClaim" not in volumes.get(best["name"], {}):
        return None
    rel = posixpath.relpath(path, best["mountPath"])
    inside = posixpath.normpath(posixpath.join(best.get("subPath", ""), rel))
    return volumes[best["name"]]["persistentVolumeClaim"]["claimName"], inside


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def job_config_class(script: str) -> type[JobConfig]:
    module, _, name = JOB_CONFIGS[script].partition(":")
    return getattr(importlib.import_module(module), name)


def config_values(cfg: JobConfig, dotted: str) -> list[str]:
    value: Any = cfg
    for key in dotted.split("."):
        value = getattr(value, key)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# ---------------------------------------------------------------------------------- checks
class EntrypointError(ValueError):
    pass


def parse_entrypoint(entrypoint: str) -> tuple[str, JobConfig]:
    """`python jobs/<x>.py --config FILE [flags]` -> (script, validated config).

    Paths are relative to the image's working directory, which is the repository's root.
    """
    argv = shlex.split(entrypoint)
    if len(argv) < 2 or argv[0] not in ("python", "python3"):
        raise EntrypointError(f"entrypoint must be `python jobs/<stage>.py ...`: {entrypoint!r}")
    script, args = argv[1], argv[2:]
    if not (ROOT / script).is_file():
        raise EntrypointError(f"entrypoint runs {script}, which is not a file of this repo")
    if script not in JOB_CONFIGS:
        raise EntrypointError(f"{script} is not a known job script ({sorted(JOB_CONFIGS)})")
    if "--config" not in args:
        raise EntrypointError(f"{script}: no --config FILE in the entrypoint")
    i = args.index("--config") + 1
    config = args[i] if i < len(args) else ""
    if config.startswith("/") or not (ROOT / config).is_file():
        raise EntrypointError(f"{script}: --config {config!r} is not a file of this repo "
                              "(relative to the repo root, the image's working directory)")
    args = [*args[:i], str(ROOT / config), *args[i + 1:]]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cfg = parse_config(job_config_class(script), args)
    except SystemExit:
        raise EntrypointError(f"{script}: bad flags: {err.getvalue().strip()}") from None
    return script, cfg


def gpu_problems(spec: dict) -> list[str]:
    """Worker groups must request exactly the GPUs their rayStartParams advertise."""
    out = []
    for name, group in pod_groups(spec):
        params = group.get("rayStartParams") or {}
        res = ray_container(group).get("resources") or {}
        limit = (res.get("limits") or {}).get("nvidia.com/gpu")
        request = (res.get("requests") or {}).get("nvidia.com/gpu", limit)
        num_gpus = params.get("num-gpus")
        if limit is None and num_gpus in (None, "0"):
            continue
        if limit is None or num_gpus is None or int(limit) != int(num_gpus) \
                or int(request) != int(limit):
            out.append(f"{name}: num-gpus {num_gpus!r}, nvidia.com/gpu limit {limit!r}, "
                       f"request {request!r}")
    return out


def replica_problems(spec: dict) -> list[str]:
    out = []
    for name, g in pod_groups(spec)[1:]:
        if not 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]:
            out.append(f"{name}: needs 0 <= minReplicas {g['minReplicas']} <= replicas "
                       f"{g['replicas']} <= maxReplicas {g['maxReplicas']}")
    return out


def kuberay_images(doc: dict) -> set[str]:
    spec = cluster_spec(doc)
    images = {c.get("image") for _, g in pod_groups(spec) for c in containers(g)}
    submitter = (doc.get("spec") or {}).get("submitterPodTemplate")
    if submitter:
        images |= {c.get("image") for c in submitter["spec"]["containers"]}
    images |= {(spec.get("autoscalerOptions") or {}).get("image")} - {None}
    return images


def launcher_images(cfg: dict) -> set[str]:
    docker = cfg.get("docker") or {}
    images = {docker.get(k) for k in ("image", "head_image", "worker_image") if docker.get(k)}
    for node in cfg["available_node_types"].values():
        if (node.get("docker") or {}).get("worker_image"):
            images.add(node["docker"]["worker_image"])
    return images


PIP_PROJECT = re.compile(r"""pip3? install\b[^\n]*?\s["']?\.(\[[\w,\s-]*\])?["']?(\s|$)""")


def launcher_image_problems(cfg: dict, image: str) -> list[str]:
    """Nodes run our image, or (without docker) their setup_commands pip-install the project."""
    images = launcher_images(cfg)
    if images:
        return [f"docker image {i!r} is not {image!r}" for i in sorted(images) if i != image]
    setup = "\n".join(cfg.get("setup_commands") or [])
    return [] if PIP_PROJECT.search(setup) else ["no docker image and no `pip install .` setup"]


def launcher_gpu_problems(cfg: dict) -> list[str]:
    out = []
    provider = cfg["provider"]["type"]
    for name, node in cfg["available_node_types"].items():
        declared = node.get("resources", {}).get("GPU", 0)
        nc = node["node_config"]
        if provider == "aws":
            actual = AWS_GPUS.get(nc.get("InstanceType"), 0)
            if declared and nc.get("InstanceType") not in AWS_GPUS:
                out.append(f"{name}: add {nc.get('InstanceType')} to AWS_GPUS")
        elif provider == "gcp":
            actual = sum(a["acceleratorCount"] for a in nc.get("guestAccelerators") or [])
            if re.match(r"(a2|a3|g2)-", nc.get("machineType", "")) and not actual:
                out.append(f"{name}: GPU machine type without guestAccelerators")
        else:
            continue
        if declared != actual:
            out.append(f"{name}: resources GPU {declared} but the machine has {actual}")
    return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and ARG defaults substituted."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out, args = [], {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        inst, _, rest = line.partition(" ")
        inst = inst.upper()
        if inst == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip().strip('"')
        rest = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                      lambda m: args.get(m.group(1) or m.group(2), m.group(0)), rest)
        out.append((inst, rest))
    return out


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker semantics for simple patterns: last match wins, `!` re-includes, a matched
    folder excludes everything under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.strip("/")
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
            excluded = not neg
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# ---------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_parses_into_mappings(path):
    docs = load_all(path)
    assert docs and all(isinstance(d, dict) for d in docs), path
    for doc in docs:   # the YAML strings KubeRay passes on must parse too
        spec = doc.get("spec") or {}
        for key in ("runtimeEnvYAML", "serveConfigV2"):
            if key in spec:
                assert isinstance(spec[key], str), f"{path.name}: {key} must be a YAML string"
                assert isinstance(yaml.safe_load(spec[key]), dict), f"{path.name}: {key}"


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "configs").glob("cluster-*.yaml")),
                         ids=lambda p: p.name)
def test_cluster_job_config_validates_for_its_job(path):
    """jobs/configs/cluster-<stage>.yaml is a valid config of jobs/<stage>.py, and its stage
    folders are on the shared volume."""
    script = f"jobs/{path.stem.removeprefix('cluster-')}.py"
    assert script in JOB_CONFIGS, f"{path.name}: no job script {script}"
    cfg = parse_config(job_config_class(script), ["--config", str(path)])
    for field in SHARED_PATH_FIELDS.get(script, ()):
        for value in config_values(cfg, field):
            assert value.startswith(SHARED_MOUNT + "/"), f"{path.name}: {field}={value}"


def test_the_expected_manifests_exist():
    kinds = {(n, d["kind"]) for n, d in ray_objects()}
    assert {("raycluster.yaml", "RayCluster"), ("rayjob-synthesize.yaml", "RayJob"),
            ("rayjob-mine.yaml", "RayJob"), ("rayjob-train.yaml", "RayJob"),
            ("rayservice.yaml", "RayService")} <= kinds
    assert {p.name for p in LAUNCHERS} >= {"aws.yaml", "gcp.yaml"}


# ---------------------------------------------------------------------------------- launcher
@cache
def ray_launcher_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def launcher_schema_problems(cfg: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(ray_launcher_schema())
    out = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
           for e in validator.iter_errors(cfg)]
    if out:
        return out
    # the semantic checks `ray up` runs after the schema (ray.autoscaler._private.util)
    try:
        from ray.autoscaler._private.util import validate_config
    except ImportError:  # private API moved: the schema above still ran
        return []
    try:
        validate_config(copy.deepcopy(cfg))
    except (ValueError, RuntimeError) as exc:
        return [str(exc)]
    return []


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_validates_against_rays_schema(path):
    assert launcher_schema_problems(launcher(path)) == []


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_nodes_run_this_project(path):
    cfg = launcher(path)
    assert launcher_image_problems(cfg, pinned_image()) == []
    assert launcher_gpu_problems(cfg) == []
    types = cfg["available_node_types"]
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU")]
    cpu_workers = [n for n, t in types.items()
                   if n != cfg["head_node_type"] and not t["resources"].get("GPU")]
    assert gpu_types and cpu_workers, "GPU workers (train/mine/serve) and CPU workers (synthesis)"
    # the autoscaler only runs when the head is started with the bootstrap config
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "$RAY_HEAD_IP:6379" in " ".join(cfg["worker_start_ray_commands"])
    # stages talk through folders: every container sees the shared file system at one path
    assert f"-v {SHARED_MOUNT}:{SHARED_MOUNT}" in cfg["docker"]["run_options"]
    assert cfg["idle_timeout_minutes"] > 0


# ---------------------------------------------------------------------------------- kuberay
def kuberay_problems(doc: dict) -> list[str]:
    kind = doc.get("kind")
    out = [] if doc.get("apiVersion") == "ray.io/v1" else [f"apiVersion {doc.get('apiVersion')}"]
    out += [] if (doc.get("metadata") or {}).get("name") else ["metadata.name"]
    out += missing_fields(doc, kind)
    spec = cluster_spec(doc) if "spec" in doc else None
    if not isinstance(spec, dict):
        return out
    out += missing_fields(spec, "RayClusterSpec")
    if out:
        return out
    import ray

    if spec["rayVersion"] != ray.__version__:
        out.append(f"rayVersion {spec['rayVersion']} != installed ray {ray.__version__}")
    for name, group in pod_groups(spec):
        for c in containers(group):
            out += [f"{name}: {m}" for m in missing_fields(c, "Container")]
    out += replica_problems(spec) + gpu_problems(spec)
    return out


@pytest.mark.parametrize(("name", "doc"), ray_objects(), ids=ids(ray_objects()))
def test_kuberay_object_has_required_fields(name, doc):
    assert kuberay_problems(doc) == []


@pytest.mark.parametrize(("name", "doc"), ray_objects(), ids=ids(ray_objects()))
def test_kuberay_pods_run_the_project_image_in_the_repo(name, doc):
    """One image everywhere, and Ray runs in the repo folder so `python jobs/x.py` resolves."""
    assert kuberay_images(doc) == {pinned_image()}
    workdir = dockerfile_workdir()
    for group_name, group in pod_groups(cluster_spec(doc)):
        assert ray_container(group).get("workingDir") == workdir, group_name


@pytest.mark.parametrize(("name", "doc"), ray_objects(), ids=ids(ray_objects()))
def test_no_secret_is_written_into_a_manifest(name, doc):
    """Keys come from Kubernetes Secrets, never as literal values or runtime_env vars."""
    for group_name, group in pod_groups(cluster_spec(doc)):
        for c in containers(group):
            for env in c.get("env") or []:
                if SECRET_NAME.search(env["name"]):
                    assert "secretKeyRef" in (env.get("valueFrom") or {}), \
                        f"{group_name}: {env['name']} must come from a secretKeyRef"
    runtime_env = yaml.safe_load(doc["spec"].get("runtimeEnvYAML") or "{}")
    assert not [k for k in (runtime_env.get("env_vars") or {}) if SECRET_NAME.search(k)]


def test_raycluster_autoscales_gpu_workers_on_shared_storage():
    ((_, doc),) = ray_objects("RayCluster")
    spec = doc["spec"]
    assert spec.get("enableInTreeAutoscaling") is True
    gpu_groups = [g for _, g in pod_groups(spec)[1:] if group_resources(g)[1] > 0]
    assert gpu_groups and all(g["maxReplicas"] > g["minReplicas"] for g in gpu_groups)
    assert shared_mount_problems(spec) == []


def shared_mount_problems(spec: dict) -> list[str]:
    """Every pod (the head runs the drivers, which write summaries) mounts the shared PVC."""
    claim = shared_claim()
    return [f"{name}: {SHARED_MOUNT} is not the {claim} PVC"
            for name, group in pod_groups(spec)
            if (pvc_location(spec, group, SHARED_MOUNT) or ("", ""))[0] != claim]


# ---------------------------------------------------------------------------------- rayjobs
RAYJOBS = ray_objects("RayJob")


@cache
def rayjob_configs() -> dict[str, JobConfig]:
    """Job script -> its validated config, for every RayJob in cluster/kuberay/."""
    out = {}
    for _, doc in RAYJOBS:
        script, cfg = parse_entrypoint(doc["spec"]["entrypoint"])
        out[script] = cfg
    return out


@pytest.mark.parametrize(("name", "doc"), RAYJOBS, ids=ids(RAYJOBS))
def test_rayjob_runs_a_job_script_with_a_valid_config(name, doc):
    spec = doc["spec"]
    script, cfg = parse_entrypoint(spec["entrypoint"])   # raises on any mistake
    assert name == f"rayjob-{Path(script).stem}.yaml", "one RayJob file per stage, named after it"
    assert isinstance(cfg, job_config_class(script))
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(runtime_env) <= RUNTIME_ENV_KEYS, f"runtime_env keys {sorted(runtime_env)}"
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**runtime_env)   # Ray's own type checks (env_vars: Dict[str, str])


@pytest.mark.parametrize(("name", "doc"), RAYJOBS, ids=ids(RAYJOBS))
def test_rayjob_stage_folders_are_on_the_shared_volume(name, doc):
    spec = cluster_spec(doc)
    assert shared_mount_problems(spec) == []
    script, cfg = parse_entrypoint(doc["spec"]["entrypoint"])
    for field in SHARED_PATH_FIELDS.get(script, ()):
        for path in config_values(cfg, field):
            for group_name, group in pod_groups(spec):
                loc = pvc_location(spec, group, path)
                assert loc and loc[0] == shared_claim(), \
                    f"{script} {field}={path} is not on the shared volume in {group_name}"


def sizing_problems(script: str, cfg: Any, spec: dict) -> list[str]:
    """Does the job's cluster hold what the job's config asks Ray for?"""
    gpus = sum(pods(spec, n, g) * group_resources(g)[1] for n, g in pod_groups(spec))
    if script == "jobs/train.py":
        # one Ray Train worker = 1 GPU + cpus_per_worker CPUs, on one pod
        need = cfg.num_workers
        have = capacity(spec, cfg.cpus_per_worker, 1 if cfg.use_gpu != "no" else 0)
        return [] if have >= need and (gpus or cfg.use_gpu == "no") else \
            [f"{need} train workers, room for {have} ({gpus:g} GPUs)"]
    if script == "jobs/mine.py":
        need = max(cfg.embed_actors, cfg.num_shards) if cfg.use_gpu != "no" else 0
        return [] if gpus >= need else [f"{need} GPU actors/shards, {gpus:g} GPUs"]
    if script == "jobs/synthesize.py":
        have = capacity(spec, cfg.cpus_per_actor, 0)
        out = [] if have >= cfg.num_actors else [f"{cfg.num_actors} actors, room for {have}"]
        return out + ([f"synthesis is API-bound: {gpus:g} GPUs idle"] if gpus else [])
    return []


@pytest.mark.parametrize(("name", "doc"), RAYJOBS, ids=ids(RAYJOBS))
def test_rayjob_cluster_is_sized_for_its_job(name, doc):
    script, cfg = parse_entrypoint(doc["spec"]["entrypoint"])
    spec = cluster_spec(doc)
    assert sizing_problems(script, cfg, spec) == []
    if script in ("jobs/train.py", "jobs/mine.py"):
        assert any(group_resources(g)[1] > 0 for _, g in pod_groups(spec)[1:]), "GPU workers"


def test_synthesis_gets_its_llm_key_from_a_secret_on_every_pod():
    cfg = rayjob_configs()["jobs/synthesize.py"]
    ((_, doc),) = [(n, d) for n, d in RAYJOBS if "synthesize" in d["spec"]["entrypoint"]]
    for name, group in pod_groups(cluster_spec(doc)):
        env = env_of(ray_container(group)).get(cfg.llm.api_key_env)
        assert env and "secretKeyRef" in env.get("valueFrom", {}), \
            f"{name}: ${cfg.llm.api_key_env} must come from a Secret (the actors call the API)"


def test_stages_hand_their_folders_to_the_next_stage():
    """prepared -> synthesize -> mine -> train, on the same volume (the model: below)."""
    jobs = rayjob_configs()
    synth, mine, train = jobs["jobs/synthesize.py"], jobs["jobs/mine.py"], jobs["jobs/train.py"]
    assert mine.input == synth.output
    assert mine.output in train.stage1.inputs and mine.output in train.stage2.inputs
    assert synth.input in train.stage2.inputs   # the prepared pairs/classification data
    assert mine.selection.num_negatives >= train.loss.num_negatives


def train_rayjob() -> dict:
    return next(d for _, d in RAYJOBS if "train.py" in d["spec"]["entrypoint"])


def served_model_problems(train_doc: dict, svc_doc: dict) -> list[str]:
    """The RayService's model must be the folder the train RayJob leaves its final model in
    (``final_model_dir``, what the training code writes), on the same volume claim, for every
    pod that hosts a replica."""
    from embedforge.train.run import final_model_dir

    _, train = parse_entrypoint(train_doc["spec"]["entrypoint"])
    final = final_model_dir(train)
    train_spec = cluster_spec(train_doc)
    written = {pvc_location(train_spec, g, final) for _, g in pod_groups(train_spec)}
    if len(written) != 1 or None in written:
        return [f"the train job's pods do not all see {final} on one volume: {written}"]
    (where,) = written
    cfg = ServeConfig.model_validate(serve_app(svc_doc)["args"])
    spec = cluster_spec(svc_doc)
    out = []
    for name, group in replica_groups(spec, cfg):
        seen = pvc_location(spec, group, cfg.encoder.model)
        if seen != where:
            out.append(f"{name}: serves {cfg.encoder.model} = {seen}, but training writes its "
                       f"final model {final} to {where}")
    return out


def mount_source(run_options: list[str], path: str) -> str | None:
    """The host path behind ``path`` in a container started with ``docker run`` options
    ``-v HOST:CONTAINER[:ro]`` (the deepest mount wins)."""
    best = None
    for opt in run_options:
        m = re.fullmatch(r"-v\s+([^:\s]+):([^:\s]+)(:\w+)?", opt.strip())
        if not m:
            continue
        host, inside = m.group(1), m.group(2).rstrip("/")
        if (path == inside or path.startswith(inside + "/")) and (
                best is None or len(inside) > len(best[1])):
            best = (host, inside)
    return None if best is None else posixpath.normpath(best[0] + path[len(best[1]):])


def launcher_served_model_problems(cfg: dict, serve_yaml: dict, train_doc: dict) -> list[str]:
    """On a launcher cluster, `serve deploy`'s model path, through the containers' mounts, is
    the host folder the train job (same flags as the RayJob) writes its final model to."""
    from embedforge.train.run import final_model_dir

    _, train = parse_entrypoint(train_doc["spec"]["entrypoint"])
    opts = cfg["docker"]["run_options"]
    written = mount_source(opts, final_model_dir(train))
    (app,) = serve_yaml["applications"]
    model = app["args"]["encoder"]["model"]
    served = mount_source(opts, model)
    if written is None or served != written:
        return [f"serves {model} = host {served}, but training writes its final model to "
                f"host {written}"]
    return []


def test_the_served_model_is_the_train_jobs_final_export():
    """RayJob train -> its final model folder -> the RayService's and `serve deploy`'s model."""
    ((_, svc),) = ray_objects("RayService")
    assert served_model_problems(train_rayjob(), svc) == []
    for path in LAUNCHERS:
        assert launcher_served_model_problems(launcher(path), serve_deploy_yaml(),
                                              train_rayjob()) == [], path.name


def test_the_model_path_check_fails_on_a_mismatch():
    ((_, svc),) = ray_objects("RayService")
    for old, new in (("runs/qzhou-7b/train/stage2", "runs/qzhou-7b/train"),   # the old bug
                     ("runs/qzhou-7b/train/stage2", "runs/qzhou-7b/train/stage1")):
        broken = copy.deepcopy(svc)
        for _, g in pod_groups(cluster_spec(broken)):
            for m in ray_container(g).get("volumeMounts") or []:
                if m.get("subPath") == old:
                    m["subPath"] = new
        assert served_model_problems(train_rayjob(), broken), new
    train = copy.deepcopy(train_rayjob())
    train["spec"]["entrypoint"] += " --run 1"       # the final model is stage 1's now
    assert served_model_problems(train, svc)
    cfg = copy.deepcopy(launcher(LAUNCHERS[0]))
    cfg["docker"]["run_options"] = [o.replace("train/stage2:", "train:")
                                    for o in cfg["docker"]["run_options"]]
    assert launcher_served_model_problems(cfg, serve_deploy_yaml(), train_rayjob())


# ---------------------------------------------------------------------------------- rayservice
def serve_app(doc: dict) -> dict:
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(doc["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(raw)   # Ray's own validation of a serve config
    (app,) = schema.applications
    return next(a for a in raw["applications"] if a["name"] == app.name)


def test_rayservice_deploys_the_serve_deploy_application():
    ((_, doc),) = ray_objects("RayService")
    app = serve_app(doc)
    (expected,) = serve_deploy_yaml()["applications"]
    assert app["import_path"] == expected["import_path"] == "embedforge.serve.app:build_app"
    ServeConfig.model_validate(app["args"])
    # the same application as `serve deploy cluster/serve/embedforge-serve.yaml`, word for word
    assert app == expected
    raw = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert raw["http_options"] == serve_deploy_yaml()["http_options"]


def replica_groups(spec: dict, cfg: ServeConfig) -> list[tuple[str, dict]]:
    """The groups whose pods can host a replica (room for its CPUs and GPUs)."""
    gpus_per = 1.0 if cfg.num_gpus == "auto" else float(cfg.num_gpus)
    out = []
    for name, group in pod_groups(spec):
        cpus, gpus = group_resources(group)
        if cpus >= cfg.num_cpus and gpus >= gpus_per:
            out.append((name, group))
    return out


def test_rayservice_pods_can_host_every_replica_with_its_keys_and_model():
    ((_, doc),) = ray_objects("RayService")
    cfg = ServeConfig.model_validate(serve_app(doc)["args"])
    spec = cluster_spec(doc)
    gpus_per = 1.0 if cfg.num_gpus == "auto" else float(cfg.num_gpus)
    replicas = cfg.autoscaling.max_replicas if cfg.replicas == "auto" else int(cfg.replicas)
    assert spec.get("enableInTreeAutoscaling") or cfg.replicas != "auto"
    assert capacity(spec, cfg.num_cpus, gpus_per) >= replicas
    assert replica_groups(spec, cfg)
    for name, group in replica_groups(spec, cfg):
        env = env_of(ray_container(group)).get(cfg.api_key_env)
        assert env and "secretKeyRef" in env.get("valueFrom", {}), f"{name}: ${cfg.api_key_env}"
        assert pvc_location(spec, group, cfg.encoder.model), f"{name}: model not mounted"
    assert not cfg.allow_unauthenticated


# ---------------------------------------------------------------------------------- image
@cache
def dockerfile_workdir() -> str:
    return [a for i, a in dockerfile_instructions() if i == "WORKDIR"][-1]


COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cmake|gfortran|nvcc)\b")


def dockerfile_stages(inst: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions of each stage (a FROM starts one; global ARGs before it are dropped)."""
    stages: list[list[tuple[str, str]]] = []
    for i, a in inst:
        if i == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((i, a))
    return stages


def dockerfile_problems(inst: list[tuple[str, str]] | None = None) -> list[str]:
    """Multi-stage: every stage starts from the cluster's Ray image pinned by digest; the
    project (.[gpu]) and torch (the constraints.txt version) are built as wheels with pins and
    installed into the final stage from those wheels only; no compiler is installed there."""
    import ray

    inst = dockerfile_instructions() if inst is None else inst
    stages = dockerfile_stages(inst)
    out = []
    want = rf"rayproject/ray:{re.escape(ray.__version__)}-py311-cu\d+@sha256:[0-9a-f]{{64}}"
    names = set()
    for stage in stages:
        base, *alias = stage[0][1].split()
        if base not in names and not re.fullmatch(want, base):
            out.append(f"FROM {base} is not {want} (the cluster's Ray and Python, by digest)")
        if len(alias) == 2 and alias[0].upper() == "AS":
            names.add(alias[1])
    if len(stages) < 2:
        out.append("single stage: build tools would stay in the final image")
    runs = "\n".join(a for i, a in inst if i == "RUN")
    final_runs = "\n".join(a for i, a in (stages[-1] if stages else []) if i == "RUN")
    if re.search(r"apt-get install[^\n]*", final_runs) and \
            COMPILERS.search(" ".join(re.findall(r"apt-get install[^\n&;]*", final_runs))):
        out.append("the final stage installs a compiler")
    if not re.search(r"pip wheel\b[^\n]*\s[\"']?\.\[gpu\]", runs):
        out.append("no `pip wheel .[gpu]` of this project in the build stage")
    installs = re.findall(r"pip3? install\b[^\n]*", final_runs)
    if not installs or not all("--no-index" in c and "--only-binary=:all:" in c and "[gpu]" in c
                               for c in installs):
        out.append("the final stage must install the project's wheels only "
                   "(--no-index --only-binary=:all: ... embedforge[gpu])")
    for cmd in re.findall(r"pip3? (?:install|wheel)\b[^\n]*", runs):
        if " -c " not in cmd and "--index-url" not in cmd:
            out.append(f"pip without constraints: {cmd[:80]}")
    torch_pin = re.search(r"torch==([\w.+]+)", runs)
    constraint = re.search(r"^torch==(\S+)", (ROOT / "constraints.txt").read_text(), re.M)
    if not (torch_pin and constraint and torch_pin.group(1) == constraint.group(1)):
        out.append("torch must be pinned to the constraints.txt version")
    copied = " ".join(a for i, a in inst if i == "COPY")
    out += [f"COPY of {p} missing" for p in ("platform/", "jobs/", "pyproject.toml")
            if p not in copied]
    return out


def test_dockerfile_builds_this_project_on_the_clusters_ray():
    assert dockerfile_problems() == []


def test_dockerfile_check_catches_a_tag_a_single_stage_and_a_compiler():
    inst = dockerfile_instructions()
    by_tag = [(i, re.sub(r"@sha256:[0-9a-f]{64}", "", a)) if i == "FROM" else (i, a) for i, a in inst]
    assert any("by digest" in p for p in dockerfile_problems(by_tag))
    last = max(n for n, (i, _) in enumerate(inst) if i == "FROM")
    single = [(i, a) for n, (i, a) in enumerate(inst) if i != "FROM" or n == last]
    assert any("single stage" in p for p in dockerfile_problems(single))
    gcc = [*inst, ("RUN", "apt-get update && apt-get install -y gcc")]
    assert any("installs a compiler" in p for p in dockerfile_problems(gcc))


def test_the_image_pins_the_cloud_sdks_it_bakes():
    """Every package the cloud constraints add is pinned once, and nothing else of
    constraints.txt is overridden but python-dateutil (botocore needs <3)."""
    def pins(path):
        return {ln.split("==")[0].lower().replace("_", "-"): ln.split("==")[1].strip()
                for ln in path.read_text().splitlines() if "==" in ln and not ln.startswith("#")}

    base, cloud = pins(ROOT / "constraints.txt"), pins(CLUSTER / "docker" / "constraints-cloud.txt")
    assert {"boto3", "google-cloud-secret-manager", "google-api-python-client"} <= set(cloud)
    assert set(cloud) & set(base) == {"python-dateutil"}
    assert "grep -v '^python-dateutil==' constraints.txt" in DOCKERFILE.read_text()


def test_every_manifest_uses_the_one_image_the_dockerfile_builds():
    """The tag the README builds (with the project version), pinned by one digest everywhere:
    a tag can be re-pushed with other content, a digest cannot."""
    image = project_image()
    assert image.rsplit(":", 1)[1] == embedforge.__version__, "tag the image with the version"
    assert f"-t {image} ." in DOCKERFILE.read_text(), "the Dockerfile documents the same tag"
    images = set().union(*(kuberay_images(d) for _, d in ray_objects()),
                         *(launcher_images(launcher(p)) for p in LAUNCHERS))
    assert images == {pinned_image()}
    assert PINNED.fullmatch(pinned_image()).group("image") == image


def test_docker_context_keeps_what_the_image_and_jobs_need():
    patterns = dockerignore_patterns()
    needed = ["pyproject.toml", "README.md", "constraints.txt", "platform/embedforge/__init__.py",
              "platform/embedforge/serve/app.py", str(SERVE_YAML.relative_to(ROOT))]
    for _, doc in RAYJOBS:
        argv = shlex.split(doc["spec"]["entrypoint"])
        needed += [argv[1], argv[argv.index("--config") + 1]]
    assert [p for p in needed if dockerignored(p, patterns)] == []
    assert dockerignored(".venv/bin/python", patterns) and dockerignored("runs/demo/x", patterns)


# ---------------------------------------------------------------------------------- the checks can fail
def real(kind: str) -> dict:
    return copy.deepcopy(ray_objects(kind)[0][1])


def test_checks_catch_a_typod_job_script_a_missing_config_and_a_bad_flag():
    entry = real("RayJob")["spec"]["entrypoint"]
    with pytest.raises(EntrypointError, match="not a file"):
        parse_entrypoint(re.sub(r"jobs/(\w+)\.py", r"jobs/\1s.py", entry))
    with pytest.raises(EntrypointError, match="--config"):
        parse_entrypoint(re.sub(r"--config \S+", "--config jobs/configs/nope.yaml", entry))
    with pytest.raises(EntrypointError, match="bad flags"):
        parse_entrypoint(entry + " --no-such-flag 1")
    with pytest.raises(ConfigError, match="unknown key"):   # a config key the class lacks
        parse_entrypoint("python jobs/mine.py --config jobs/configs/qzhou-7b.yaml")


def test_checks_catch_missing_fields_gpu_mismatch_and_bad_bounds():
    doc = real("RayCluster")
    del doc["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    assert "RayClusterSpec: workerGroupSpecs[].maxReplicas" in kuberay_problems(doc)
    job = real("RayJob")
    del job["spec"]["shutdownAfterJobFinishes"]
    assert kuberay_problems(job) == ["RayJob: spec.shutdownAfterJobFinishes"]
    doc = real("RayCluster")
    gpu = next(g for g in doc["spec"]["workerGroupSpecs"] if "num-gpus" in g["rayStartParams"])
    gpu["rayStartParams"]["num-gpus"] = "4"
    assert gpu_problems(doc["spec"])
    gpu["minReplicas"] = gpu["maxReplicas"] + 1
    assert replica_problems(doc["spec"])


def test_checks_catch_a_wrong_image_an_unsized_job_and_a_bad_launcher():
    doc = real("RayJob")
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "image"] = "rayproject/ray:2.60.0"
    assert len(kuberay_images(doc)) == 2
    train = next(copy.deepcopy(d) for _, d in RAYJOBS if "train.py" in d["spec"]["entrypoint"])
    train["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 1
    script, cfg = parse_entrypoint(train["spec"]["entrypoint"])
    assert sizing_problems(script, cfg, cluster_spec(train))
    cfg = copy.deepcopy(launcher(LAUNCHERS[0]))
    cfg["max_worker"] = cfg.pop("max_workers")
    assert launcher_schema_problems(cfg)
    cfg = copy.deepcopy(launcher(LAUNCHERS[0]))
    next(t for t in cfg["available_node_types"].values() if t["resources"].get("GPU"))[
        "resources"]["GPU"] += 1
    assert launcher_gpu_problems(cfg)
    cfg["docker"] = {}
    assert launcher_image_problems(cfg, project_image())
    cfg["setup_commands"] = ["pip install '.[gpu]'"]
    assert launcher_image_problems(cfg, project_image()) == []
    assert dockerignored("jobs/train.py", ["jobs"]) and not dockerignored("jobs/x", ["jobs", "!jobs"])
