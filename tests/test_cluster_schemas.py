"""The KubeRay manifests validated against the Kubernetes API schemas, offline.

``kubernetes-validate`` (PyPI) bundles the JSON schemas of every Kubernetes API version; in
strict mode an unknown field is an error, so a typo (``readOnlyRootFileSystem``) or a field in
the wrong place fails here instead of at ``kubectl apply``. Checked:

* the plain objects (NetworkPolicy, ServiceAccount, PersistentVolumeClaim) as they are;
* every pod a Ray object creates (head, each worker group, the RayJob submitter), wrapped as a
  core/v1 ``PodTemplate``: KubeRay copies these templates into the pods it creates, so they
  must be valid Kubernetes pod specs; the autoscaler sidecar's ``autoscalerOptions``
  (resources, securityContext, volumeMounts) as a container of the head's pod;
* every volumeMount names a volume of its pod (the schemas cannot see that).

The KubeRay CRD schemas themselves (the ray.io/v1 fields around the pod templates) are not
bundled by any registry package; ``test_cluster_configs.py`` checks the fields KubeRay requires.
"""

from __future__ import annotations

import copy

import pytest

from test_cluster_configs import cluster_spec, ids, kuberay_docs, pod_groups, ray_objects

# the oldest Kubernetes the manifests target (EKS/GKE standard support, 2026): a field newer
# than this is an error
K8S_VERSION = "1.31.0"
KUBERAY_VOLUMES = {"ray-logs"}   # KubeRay adds it to autoscaling heads when missing


def validate(obj: dict) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        return [f"{obj['kind']} {obj['metadata']['name']}: {where}: {exc.message}"]
    return []


def pod_template_objects(doc: dict) -> list[dict]:
    """Each pod template of a Ray object as a core/v1 PodTemplate named after its group."""
    spec = cluster_spec(doc)
    name = doc["metadata"]["name"]
    templates = [(group, g["template"]) for group, g in pod_groups(spec)]
    if doc["kind"] == "RayJob" and doc["spec"].get("submitterPodTemplate"):
        templates.append(("submitter", doc["spec"]["submitterPodTemplate"]))
    auto = spec.get("autoscalerOptions")
    if spec.get("enableInTreeAutoscaling") and auto:
        head = copy.deepcopy(spec["headGroupSpec"]["template"])
        sidecar = {"name": "autoscaler", "image": head["spec"]["containers"][0]["image"]}
        sidecar.update({k: auto[k] for k in ("resources", "securityContext", "volumeMounts",
                                             "env", "imagePullPolicy") if k in auto})
        head["spec"]["containers"].append(sidecar)
        templates.append(("head+autoscaler", head))
    return [{"apiVersion": "v1", "kind": "PodTemplate",
             "metadata": {"name": f"{name}-{group}".lower().replace("+", "-")}, "template": tpl}
            for group, tpl in templates]


def mount_problems(obj: dict) -> list[str]:
    pod = obj["template"]["spec"]
    volumes = {v["name"] for v in pod.get("volumes") or []} | KUBERAY_VOLUMES
    return [f"{obj['metadata']['name']}/{c['name']}: volumeMount {m['name']} has no volume"
            for c in pod.get("containers", []) + pod.get("initContainers", [])
            for m in c.get("volumeMounts") or [] if m["name"] not in volumes]


PLAIN = [(f"{path}:{d['kind']}/{d['metadata']['name']}", d) for path, d in kuberay_docs()
         if d.get("apiVersion", "").split("/")[0] != "ray.io"]


@pytest.mark.parametrize(("name", "doc"), PLAIN, ids=[n for n, _ in PLAIN])
def test_plain_objects_match_the_kubernetes_schema(name, doc):
    assert validate(doc) == []


@pytest.mark.parametrize(("name", "doc"), ray_objects(), ids=ids(ray_objects()))
def test_every_pod_template_is_a_valid_kubernetes_pod(name, doc):
    objects = pod_template_objects(doc)
    assert len(objects) >= 2
    problems = [p for obj in objects for p in validate(obj) + mount_problems(obj)]
    assert problems == []


def test_the_validation_catches_typos_and_missing_volumes():
    doc = copy.deepcopy(ray_objects("RayService")[0][1])
    head = cluster_spec(doc)["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["securityContext"] = {"readOnlyRootFileSystem": True}
    problems = validate(pod_template_objects(doc)[0])
    assert problems and "readOnlyRootFileSystem" in problems[0]
    head["containers"][0]["securityContext"] = {}
    head["containers"][0]["volumeMounts"].append({"name": "nowhere", "mountPath": "/x"})
    obj = pod_template_objects(doc)[0]
    assert validate(obj) == [] and mount_problems(obj) == [
        "embedforge-head/ray-head: volumeMount nowhere has no volume"]
    policy = copy.deepcopy(next(d for _, d in PLAIN if d["kind"] == "NetworkPolicy"))
    policy["spec"]["egress"][0]["ports"][0]["port"] = {"number": 53}
    assert validate(policy)
