"""Offline checks of the Kubernetes tree (k8s/): YAML, kustomize consistency both ways, Kubernetes schemas
(strict), security settings of every container, images against params.yaml, Secrets only referenced,
the overlays (and the GPU-worker component on prod) rendered by `kubectl kustomize`, and checkov.

Custom resources have no schema in kubernetes-validate (its Python API raises SchemaNotFoundError, its CLI lets
them pass): each kind is checked structurally here instead, KEDA's ScaledObject against the fields of its
keda.sh/v1alpha1 CRD that this tree may use (unknown keys, trigger metadata that is not a string, bounds).

kubectl and checkov come from the tools virtualenv (.venv-tools, `make tools`),
never from .venv: checkov pins old packaging, dpath, networkx, cachetools and importlib_metadata.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from medmlops.config import load_params

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
BASE = K8S / "base"
TOOLS_BIN = REPO / ".venv-tools" / "bin"
# Newest schema set bundled with kubernetes-validate 1.37.0 (requirements.lock).
KUBERNETES_VERSION = "1.37"
# Custom resources: no bundled schema; checked structurally below.
CRD_API_VERSIONS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
ONE_SHOT_KINDS = {"Job", "CronJob"}
RUN_AS_USER = 10001
QUANTITY = re.compile(r"^\d+(\.\d+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
CHECKOV_SKIP = re.compile(r"^CKV2?_K8S_\d+=\S.{19,}$")  # a check id and a real justification


Doc = dict[str, Any]


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


YAML_FILES = sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")])
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = sorted(p.parent for p in (K8S / "components").glob("*/kustomization.yaml"))
RENDERABLE = [*OVERLAYS, K8S / "pipelines"]
GPU_WORKER = K8S / "components" / "monitoring-worker-gpu"
SPOOL = "/var/spool/medmlops"
# The worker's liveness signal: a file it touches on every queue poll and lease renewal (k8s/README.md).
HEARTBEAT_ENV = "MEDMLOPS_WORKER_HEARTBEAT"


def _kustomization(directory: Path) -> Doc:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def _resource_files(directory: Path) -> list[Path]:
    """The manifest files a kustomization lists (directories, i.e. other kustomizations, left out)."""
    paths = [(directory / r).resolve() for r in _kustomization(directory).get("resources", [])]
    return [p for p in paths if p.is_file()]


def _manifests(directory: Path) -> list[tuple[Path, Doc]]:
    return [(path, doc) for path in _resource_files(directory) for doc in _docs(path)]


def _patch_files() -> set[Path]:
    return {
        (k.parent / p["path"]).resolve()
        for k in KUSTOMIZATIONS
        for p in yaml.safe_load(k.read_text()).get("patches", [])
        if "path" in p
    }


MANIFESTS = _manifests(BASE) + _manifests(K8S / "pipelines")
BASE_DOCS = [doc for _, doc in _manifests(BASE)]


def _id(path: Path, doc: Doc) -> str:
    return f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"


def _find(kind: str, name: str, docs: list[Doc] = BASE_DOCS) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if doc["kind"] in WORKLOAD_KINDS:
        return doc["spec"]["template"]["spec"]
    return None


def _pod_labels(doc: Doc) -> dict[str, str]:
    template = doc["spec"]["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob" else doc["spec"]["template"]
    return template["metadata"]["labels"]


def _workloads(docs: list[Doc] = BASE_DOCS) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def _selector_matches(selector: Doc, labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels + matchExpressions In/NotIn/Exists/DoesNotExist)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _label_selector(text: str) -> Doc:
    """kustomize's `labelSelector: a=b,c=d` as a LabelSelector."""
    return {"matchLabels": dict(pair.split("=", 1) for pair in text.split(","))}


def _containers(pod: Doc) -> Iterator[tuple[Doc, bool]]:
    """(container, is_init) for every container of a pod spec."""
    for c in pod.get("initContainers", []):
        yield c, True
    for c in pod["containers"]:
        yield c, False


def _to_number(quantity: str | int | float) -> float:
    text = str(quantity)
    assert QUANTITY.match(text), f"not a Kubernetes quantity: {text!r}"
    factors = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(factors, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factors[suffix]
    return float(text)


def _json_pointer(doc: Any, pointer: str) -> Any:
    for raw in pointer.lstrip("/").split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        doc = doc[int(token)] if isinstance(doc, list) else doc[token]
    return doc


def _tool(name: str) -> Path:
    path = TOOLS_BIN / name
    if not path.exists():
        pytest.fail(
            f"{_rel(path)} is missing: the tools virtualenv is not installed. "
            "Run `make tools` (checkov and kubectl, kept out of .venv).",
            pytrace=False,
        )
    return path


def _render(directory: Path) -> list[Doc]:
    done = subprocess.run(
        [str(_tool("kubectl")), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"kubectl kustomize {_rel(directory)} failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


def _render_with_component(overlay: Path, component: Path, where: Path) -> list[Doc]:
    """``overlay`` with ``component`` added, as an operator's own kustomization would (kustomize takes relative
    paths only)."""
    where.mkdir(parents=True, exist_ok=True)
    spec = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(overlay, where)],
        "components": [os.path.relpath(component, where)],
    }
    (where / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    return _render(where)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[Doc]]:
    docs = {d.name: _render(d) for d in RENDERABLE}
    docs["prod-gpu-worker"] = _render_with_component(
        K8S / "overlays" / "prod", GPU_WORKER, tmp_path_factory.mktemp("kustomize") / "prod-gpu-worker"
    )
    return docs


# ---- files and kustomize consistency ----------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_every_yaml_file_parses(path):
    docs = _docs(path)
    assert docs, f"{_rel(path)} holds no YAML document"
    for doc in docs:
        # Manifests and strategic-merge patches are mappings; JSON 6902 patches are lists of operations.
        assert isinstance(doc, dict | list), f"{_rel(path)}: a document is a {type(doc).__name__}"
        if isinstance(doc, list):
            assert all({"op", "path"} <= set(op) for op in doc), f"{_rel(path)}: not a JSON 6902 patch"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=_rel)
def test_kustomization_paths_exist(kustomization):
    spec = yaml.safe_load(kustomization.read_text())
    # A Component (k8s/components/) is a patch set an overlay opts into; everything else is a Kustomization.
    components = K8S / "components"
    expected = "Component" if kustomization.parent.parent == components else "Kustomization"
    assert spec["kind"] == expected, f"{_rel(kustomization)}: kind {spec['kind']}"
    for resource in spec.get("resources", []):
        target = kustomization.parent / resource
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{resource} does not exist"
    for component in spec.get("components", []):
        assert (kustomization.parent / component / "kustomization.yaml").is_file(), f"{component} does not exist"
    for patch in spec.get("patches", []):
        assert ("path" in patch) != ("patch" in patch), f"a patch needs exactly one of path/patch: {patch}"
        if "path" in patch:
            assert (kustomization.parent / patch["path"]).is_file(), f"patch {patch['path']} does not exist"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=_rel)
def test_every_manifest_file_is_listed_and_every_listed_file_exists(kustomization):
    directory = kustomization.parent
    on_disk = {p.resolve() for p in directory.glob("*.yaml")} - {kustomization.resolve()} - _patch_files()
    assert on_disk == set(_resource_files(directory)), (
        f"{_rel(directory)}: not listed in resources: {sorted(p.name for p in on_disk - set(_resource_files(directory)))}"
    )


def test_every_patch_file_is_used():
    patch_files = {p.resolve() for p in K8S.glob("overlays/*/patches/*.yaml")}
    patch_files |= {p.resolve() for p in K8S.glob("components/*/*.yaml") if p.name != "kustomization.yaml"}
    assert patch_files <= _patch_files(), f"unused patch files: {sorted(map(_rel, patch_files - _patch_files()))}"


@pytest.mark.parametrize("overlay", [*OVERLAYS, *COMPONENTS], ids=_rel)
def test_overlay_patches_target_resources_that_exist_in_base(overlay):
    spec = _kustomization(overlay)
    if spec["kind"] == "Kustomization":  # a Component has no resources of its own: it patches its overlay's
        assert "../../base" in spec["resources"]
    assert spec.get("patches"), f"{_rel(overlay)} has no patches"
    for patch in spec["patches"]:
        body = (
            yaml.safe_load((overlay / patch["path"]).read_text()) if "path" in patch else yaml.safe_load(patch["patch"])
        )
        target = patch.get("target")
        if target is None:  # strategic merge patch: kind and name come from the patch itself
            target = {"kind": body["kind"], "name": body["metadata"]["name"]}
        matches = [
            d
            for d in BASE_DOCS
            if d["kind"] == target["kind"]
            and ("name" not in target or d["metadata"]["name"] == target["name"])
            and (
                "labelSelector" not in target
                or _selector_matches(_label_selector(target["labelSelector"]), d["metadata"].get("labels", {}))
            )
        ]
        assert matches, f"{_rel(overlay)}: patch target {target} matches nothing in base"
        if isinstance(body, list):  # JSON 6902: what it replaces or removes must be there
            for op in body:
                if op["op"] in ("replace", "remove", "test"):
                    for doc in matches:
                        try:
                            _json_pointer(doc, op["path"])
                        except (KeyError, IndexError) as err:
                            pytest.fail(
                                f"{_rel(overlay)}: {op['path']} is not in {target['kind']}/"
                                f"{doc['metadata']['name']} ({err!r})"
                            )


# ---- schemas ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "doc"),
    [(p, d) for p, d in MANIFESTS if d["kind"] not in CRD_API_VERSIONS],
    ids=[_id(p, d) for p, d in MANIFESTS if d["kind"] not in CRD_API_VERSIONS],
)
def test_manifest_validates_against_the_kubernetes_schema(path, doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_schema_validation_rejects_unknown_fields():
    doc = yaml.safe_load(yaml.safe_dump(_find("Deployment", "mlflow")))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = doc["spec"]["template"]["spec"]["containers"][
        0
    ].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# KEDA's ScaledObject (keda.sh/v1alpha1, KEDA 2.x CRD): the fields this tree may use, each with its type. Unknown
# keys fail, as the API server's structural schema would prune or reject them. Trigger metadata is a map of strings
# in the CRD: a YAML number there (threshold: 25) is rejected by the API server, so it is rejected here.
SCALED_OBJECT_SPEC: dict[str, Any] = {
    "scaleTargetRef": {"apiVersion": str, "kind": str, "name": str, "envSourceContainerName": str},
    "pollingInterval": int,
    "cooldownPeriod": int,
    "initialCooldownPeriod": int,
    "idleReplicaCount": int,
    "minReplicaCount": int,
    "maxReplicaCount": int,
    "fallback": {"failureThreshold": int, "replicas": int},
    "advanced": {
        "restoreToOriginalReplicaCount": bool,
        "horizontalPodAutoscalerConfig": {"name": str, "behavior": dict},
    },
    "triggers": [{"type": str, "name": str, "metadata": {str: str}, "metricType": str}],
}
SCALED_OBJECT_REQUIRED = {"scaleTargetRef", "triggers"}


def _check_shape(value: Any, shape: Any, where: str) -> None:
    if isinstance(shape, list):
        assert isinstance(value, list) and value, f"{where}: a non-empty list"
        for i, item in enumerate(value):
            _check_shape(item, shape[0], f"{where}[{i}]")
    elif isinstance(shape, dict) and set(shape) == {str}:  # a map of strings (trigger metadata)
        assert isinstance(value, dict) and value, f"{where}: a non-empty map"
        for key, item in value.items():
            assert isinstance(item, str), f"{where}.{key}: {item!r} must be a string (the CRD's map[string]string)"
    elif isinstance(shape, dict):
        assert isinstance(value, dict), f"{where}: an object"
        unknown = set(value) - set(shape)
        assert not unknown, f"{where}: unknown fields {sorted(unknown)} (expected some of {sorted(shape)})"
        for key, item in value.items():
            _check_shape(item, shape[key], f"{where}.{key}")
    else:
        assert isinstance(value, shape) and not (shape is int and isinstance(value, bool)), (
            f"{where}: {value!r} is not {shape.__name__}"
        )


def _check_scaled_object(doc: Doc) -> None:
    """The ScaledObject's structure (KEDA's CRD) and the rules KEDA's admission webhook enforces."""
    spec = doc["spec"]
    _check_shape(spec, SCALED_OBJECT_SPEC, f"ScaledObject/{doc['metadata']['name']}.spec")
    assert set(spec) >= SCALED_OBJECT_REQUIRED
    assert "name" in spec["scaleTargetRef"]
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    assert 0 <= low <= high, f"minReplicaCount {low} > maxReplicaCount {high}"
    if "fallback" in spec:
        fallback = spec["fallback"]
        assert fallback["failureThreshold"] >= 1, "fallback failureThreshold"
        assert low <= fallback["replicas"] <= high, f"fallback replicas {fallback['replicas']} outside {low}..{high}"
        # KEDA applies a fallback only to AverageValue triggers (the default metricType).
        assert all(t.get("metricType", "AverageValue") == "AverageValue" for t in spec["triggers"])
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior:  # an autoscaling/v2 HPA behavior: let the Kubernetes schema judge it
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "keda-hpa-check"},
            "spec": {"scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": max(high, 1), "behavior": behavior},
        }
        kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    for trigger in spec["triggers"]:
        if trigger["type"] == "prometheus":
            meta = trigger["metadata"]
            assert {"serverAddress", "query", "threshold"} <= set(meta), meta
            assert re.fullmatch(r"https?://[\w.\-]+(:\d+)?", meta["serverAddress"]), meta["serverAddress"]
            assert float(meta["threshold"]) > 0
            assert meta["query"].count("(") == meta["query"].count(")"), meta["query"]


def test_custom_resources_have_no_bundled_schema_and_are_checked_structurally():
    crds = [d for _, d in MANIFESTS if d["kind"] in CRD_API_VERSIONS]
    assert {d["kind"] for d in crds} == set(CRD_API_VERSIONS)
    for doc in crds:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
        assert doc["apiVersion"] == CRD_API_VERSIONS[doc["kind"]]
        assert doc["metadata"]["namespace"] == "medmlops" and doc["metadata"]["name"]
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert "release" in doc["metadata"]["labels"], "Prometheus selects rules and monitors by label"
        if doc["kind"] == "ScaledObject":
            _check_scaled_object(doc)


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda s: s["triggers"][0]["metadata"].update(threshold=25), "must be a string"),
        (lambda s: s.update(maxReplicas=4), "unknown fields"),
        (lambda s: s["scaleTargetRef"].update(namespace="medmlops"), "unknown fields"),
        (lambda s: s.update(minReplicaCount=5, maxReplicaCount=2), "minReplicaCount"),
        (lambda s: s["fallback"].update(replicas=99), "fallback replicas"),
    ],
    ids=["number-metadata", "hpa-field-name", "unknown-ref-field", "min-above-max", "fallback-above-max"],
)
def test_scaled_object_structural_check_rejects_what_keda_would(mutation, message):
    doc = yaml.safe_load(yaml.safe_dump(_find("ScaledObject", "monitoring-worker")))
    _check_scaled_object(doc)  # the real one passes
    mutation(doc["spec"])
    with pytest.raises(AssertionError, match=message):
        _check_scaled_object(doc)


def test_service_monitors_select_services_with_the_named_port():
    services = [d for d in BASE_DOCS if d["kind"] == "Service"]
    monitors = [d for d in BASE_DOCS if d["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"medmlops-serving", "medmlops-monitoring"}
    for monitor in monitors:
        spec = monitor["spec"]
        assert spec["namespaceSelector"]["matchNames"] == ["medmlops"]
        selected = [s for s in services if _selector_matches(spec["selector"], s["metadata"].get("labels", {}))]
        assert selected, f"{monitor['metadata']['name']} selects no Service"
        for endpoint in spec["endpoints"]:
            assert endpoint["path"] == "/metrics"
            for service in selected:
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    serving = next(m for m in monitors if m["metadata"]["name"] == "medmlops-serving")
    scraped = {
        s["metadata"]["name"]
        for s in services
        if _selector_matches(serving["spec"]["selector"], s["metadata"]["labels"])
    }
    assert scraped == set(load_params(REPO / "params.yaml").registry.gates)


def test_prometheus_rule_alerts_are_well_formed_and_cover_the_platform_metrics():
    rule = _find("PrometheusRule", "medmlops-alerts")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert all(g["name"] and g["rules"] for g in rule["spec"]["groups"])
    for alert in alerts:
        assert alert["alert"] and isinstance(alert["expr"], str) and alert["expr"].strip()
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", alert["for"])
        assert alert["expr"].count("(") == alert["expr"].count(")"), alert["alert"]
    expressions = " ".join(a["expr"] for a in alerts)
    for metric in ("medmlops_informer_flag_rate", "medmlops_drift_share", "bentoml_service_request_total",
                   "medmlops_monitoring_queue_depth", "medmlops_ood_rate"):  # fmt: skip
        assert metric in expressions, f"no alert on {metric}"
    assert re.search(r'http_response_code=~"5\.\."', expressions), "no 5xx alert on BentoML requests"


# ---- images, secrets ------------------------------------------------------------------------------------


def test_base_images_equal_params_images():
    images = load_params(REPO / "params.yaml").images
    pinned = {i["name"]: i for i in _kustomization(BASE)["images"]}
    assert set(pinned) == {images.train, images.serve}
    by_name = {images.train: "train", images.serve: "serve"}
    # Every kustomization that maps an image (base, the GPU-worker component) maps it to params.yaml's.
    for directory in (k.parent for k in KUSTOMIZATIONS):
        for entry in _kustomization(directory).get("images", []):
            assert entry["name"] in by_name, f"{_rel(directory)}: unknown image {entry['name']}"
            assert f"{entry['newName']}:{entry['newTag']}" == images.ref(by_name[entry["name"]]), _rel(directory)
            assert isinstance(entry["newTag"], str)


def test_every_container_image_is_pinned():
    names = {i["name"] for i in _kustomization(BASE)["images"]}
    for doc in _workloads():
        for container, _ in _containers(_pod_spec(doc)):
            image = container["image"]
            if image in names:
                continue  # newName/newTag from params.yaml via kustomize
            assert re.fullmatch(r"[\w.\-/]+:[\w.\-]+", image) and not image.endswith(":latest"), image


@pytest.mark.reliability(
    "Security",
    "the Kubernetes Secrets in k8s/",
    "none carries data: they are created by hand from .env files",
)
def test_no_secret_manifest_carries_data():
    for path in YAML_FILES:
        for doc in _docs(path):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                assert not {"data", "stringData"} & set(doc), f"{_rel(path)}: Secrets are created by hand"


def _secret_references(doc: Doc) -> Iterator[tuple[str, str | None]]:
    """(secret name, key or None for the whole Secret) for every reference in a workload."""
    pod = _pod_spec(doc)
    for container, _ in _containers(pod):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                yield ref["name"], ref["key"]
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                yield source["secretRef"]["name"], None
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            yield volume["secret"]["secretName"], None


def _example_keys(secret: str) -> set[str]:
    path = K8S / "secrets" / f"{secret}.example.env"
    assert path.is_file(), f"Secret {secret} is used but has no example {_rel(path)}"
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return {ln.split("=", 1)[0] for ln in lines}


def test_every_referenced_secret_and_key_has_a_documented_example():
    params = load_params(REPO / "params.yaml")
    used = {(name, key) for doc in _workloads() for name, key in _secret_references(doc)}
    assert {name for name, _ in used} >= {params.kubeflow.mlflow_secret, params.kubeflow.s3_secret}
    for name, key in used:
        keys = _example_keys(name)
        assert key is None or key in keys, f"{name} has no key {key} in its example"
        assert f"kubectl create secret generic {name}" in (K8S / "secrets" / f"{name}.example.env").read_text()
    assert _example_keys(params.kubeflow.s3_secret) == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_S3_ENDPOINT_URL",
    }
    assert "tracking-uri" in _example_keys(params.kubeflow.mlflow_secret)


# ---- security, resources, probes ----------------------------------------------------------------------


@pytest.mark.parametrize("doc", _workloads(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
@pytest.mark.reliability(
    "Security",
    "every workload manifest",
    "non-root, seccomp RuntimeDefault, no service-account token, resources and probes set",
)
def test_workload_security_resources_and_probes(doc):
    pod = _pod_spec(doc)
    assert pod["automountServiceAccountToken"] is False
    account = _find("ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == RUN_AS_USER
    assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
    volumes = {v["name"] for v in pod.get("volumes", [])}
    volumes |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
    for container, is_init in _containers(pod):
        where = f"{doc['kind']}/{doc['metadata']['name']} container {container['name']}"
        resources = container["resources"]
        for what in ("cpu", "memory"):
            request, limit = resources["requests"][what], resources["limits"][what]
            assert _to_number(request) <= _to_number(limit), f"{where}: {what} request above its limit"
        if doc["kind"] not in ONE_SHOT_KINDS and not is_init:
            assert "readinessProbe" in container and "livenessProbe" in container, f"{where}: probes"
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True, where
        assert security.get("runAsUser", pod_security["runAsUser"]) == RUN_AS_USER, where
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["capabilities"] == {"drop": ["ALL"]}, where
        assert security.get("seccompProfile", pod_security["seccompProfile"])["type"] == "RuntimeDefault", where
        assert not security.get("privileged", False), where
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert set(mounts.values()) <= volumes, f"{where}: mounts an undeclared volume"
        assert "/tmp" in mounts, f"{where}: read-only root filesystem needs a writable /tmp"


def test_checkov_skips_are_annotated_with_a_justification():
    skips = [
        (doc["metadata"]["name"], key, value)
        for _, doc in MANIFESTS
        for key, value in doc["metadata"].get("annotations", {}).items()
        if key.startswith("checkov.io/skip")
    ]
    assert skips
    for name, key, value in skips:
        assert re.fullmatch(r"checkov\.io/skip\d+", key), f"{name}: {key}"
        assert CHECKOV_SKIP.match(value), f"{name}: {key} must be CKV_K8S_<id>=<why>, got {value!r}"


# ---- the platform's wiring -----------------------------------------------------------------------------


def _spool_claim(statefulset: Doc) -> Doc:
    """The volumeClaimTemplate behind the serving container's spool mount (fails when the spool is not a PVC)."""
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == SPOOL)
    volumes = {v["name"] for v in statefulset["spec"]["template"]["spec"].get("volumes", [])}
    assert mount["name"] not in volumes, f"the spool is a pod volume ({mount['name']}), gone with the pod"
    claims = {c["metadata"]["name"]: c for c in statefulset["spec"].get("volumeClaimTemplates", [])}
    assert mount["name"] in claims, f"the spool mount {mount['name']} is no volumeClaimTemplate"
    return claims[mount["name"]]


@pytest.mark.parametrize("family", sorted(load_params(REPO / "params.yaml").registry.gates))
def test_serving_family_statefulset_service_hpa_pdb(family):
    params = load_params(REPO / "params.yaml")
    deployment = _find("StatefulSet", family)
    assert not [d for d in BASE_DOCS if d["kind"] == "Deployment" and d["metadata"]["name"] == family]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == params.images.serve
    assert container["command"] == [
        "medmlops", "serve", family, "--alias", "champion", "--host", "0.0.0.0", "--port", "3000",
        "--spool-dir", SPOOL,
    ]  # fmt: skip
    assert {"name": "spool", "mountPath": SPOOL} in container["volumeMounts"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": params.kubeflow.mlflow_secret,
        "key": "tracking-uri",
    }
    settings = _find("ConfigMap", env["MONITORING_URL"]["valueFrom"]["configMapKeyRef"]["name"])
    monitoring = _find("Service", "monitoring")
    url = settings["data"][env["MONITORING_URL"]["valueFrom"]["configMapKeyRef"]["key"]]
    assert url == f"http://monitoring.medmlops.svc.cluster.local:{monitoring['spec']['ports'][0]['port']}"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    service = _find("Service", family)
    assert deployment["spec"]["serviceName"] == family
    assert _selector_matches({"matchLabels": service["spec"]["selector"]}, _pod_labels(deployment))
    hpa = _find("HorizontalPodAutoscaler", family)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": family}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = _find("PodDisruptionBudget", family)
    assert _selector_matches(pdb["spec"]["selector"], _pod_labels(deployment))
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a PDB at minReplicas blocks every drain"


@pytest.mark.parametrize("family", sorted(load_params(REPO / "params.yaml").registry.gates))
@pytest.mark.reliability(
    "Faults",
    "serving pod deleted or its node lost with records not yet delivered to monitoring",
    "the spool is a PersistentVolumeClaim per pod, retained on deletion and scale-down; the pod drains it on SIGTERM",
)
def test_serving_spool_is_a_retained_volume_per_pod_and_the_drain_fits_the_grace_period(family):
    statefulset = _find("StatefulSet", family)
    claim = _spool_claim(statefulset)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert _to_number(claim["spec"]["resources"]["requests"]["storage"]) >= 2**30
    # Retain (the default, stated): a deleted pod or a scaled-away ordinal keeps its records for when it returns.
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    # SIGTERM comes after preStop; then BentoML finishes requests in flight and the forwarder drains the spool for
    # MEDMLOPS_SPOOL_DRAIN_S. All of it must end before the kubelet's SIGKILL at terminationGracePeriodSeconds.
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float({e["name"]: e for e in container["env"]}["MEDMLOPS_SPOOL_DRAIN_S"]["value"])
    assert pre_stop >= 1 and drain >= 5
    in_flight = 10  # seconds left for predictions in flight
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + in_flight, (pre_stop, drain)


def test_platform_commands():
    commands = {d["metadata"]["name"]: _pod_spec(d)["containers"][0].get("command") for d in _workloads()}
    # The HTTP service runs no INFORMER worker: the monitoring-worker Deployment does that work.
    assert commands["monitoring"] == [
        "medmlops", "monitor", "serve", "--host", "0.0.0.0", "--port", "8080", "--no-worker",
    ]  # fmt: skip
    assert commands["monitoring-worker"][:3] == ["medmlops", "monitor", "worker"]
    # Beyond loopback the service refuses to start without a write token; serving sends the same one.
    for kind, name in (("Deployment", "monitoring"), *(("StatefulSet", f) for f in ("cxr-findings", "ich-prognosis",
                                                                                    "covid-prognosis"))):  # fmt: skip
        env = {e["name"]: e for e in _pod_spec(_find(kind, name))["containers"][0]["env"]}
        ref = env["MEDMLOPS_MONITORING_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "medmlops-monitoring-token", "key": "token"}, name
    assert commands["evidently-ui"] == [
        "evidently",
        "ui",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--workspace",
        "/workspace",
    ]
    assert commands["drift-report-cxr-findings"][:5] == ["medmlops", "monitor", "report", "--family", "cxr-findings"]
    mlflow = " ".join(commands["mlflow"])
    for flag in ("--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)", "--serve-artifacts", "--artifacts-destination=",
                 "--allowed-hosts="):  # fmt: skip
        assert flag in mlflow
    assert _find("ConfigMap", "medmlops-settings")["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    probe = _find("Deployment", "monitoring")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/healthz"


def test_services_and_network_policies_select_existing_pods():
    pods = [_pod_labels(d) for d in _workloads()]
    for service in (d for d in BASE_DOCS if d["kind"] == "Service"):
        assert any(_selector_matches({"matchLabels": service["spec"]["selector"]}, p) for p in pods), service
    policies = [d for d in BASE_DOCS if d["kind"] == "NetworkPolicy"]
    deny = _find("NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for policy in policies:
        selector = policy["spec"]["podSelector"]
        assert not selector or any(_selector_matches(selector, p) for p in pods), policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(_selector_matches(peer["podSelector"], p) for p in pods), (policy, peer)
    # Every long-running workload with a port is reachable by someone (else its port is dead behind the deny-all)...
    allowed = [p for p in policies if p is not deny]
    for doc in _workloads():
        if doc["kind"] in ONE_SHOT_KINDS or doc["metadata"]["name"] == "evidently-ui":  # UI: port-forward only
            continue
        if not any(c.get("ports") for c, _ in _containers(_pod_spec(doc))):  # the worker: it only calls out
            continue
        assert any(_selector_matches(p["spec"]["podSelector"], _pod_labels(doc)) for p in allowed), doc["metadata"]
    # ... and the pipelines (namespace kubeflow) reach MLflow.
    mlflow_rule = _find("NetworkPolicy", "mlflow-from-clients")["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}}} in mlflow_rule


def _worker(docs: list[Doc] = BASE_DOCS) -> Doc:
    return _find("Deployment", "monitoring-worker", docs)


def test_monitoring_worker_runs_the_worker_against_the_monitoring_database():
    params = load_params(REPO / "params.yaml")
    worker = _worker()
    pod = worker["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == params.images.serve, "the monitoring image (CPU torch) by default"
    assert container["command"] == ["medmlops", "monitor", "worker", "--workers", "1"], "one process per pod"
    env = {e["name"]: e for e in container["env"]}
    api_env = {
        e["name"]: e for e in _find("Deployment", "monitoring")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    database = {"name": "medmlops-monitoring-db", "key": "database-url"}
    assert env["MEDMLOPS_MONITORING_DB_URL"]["valueFrom"]["secretKeyRef"] == database
    assert env["MEDMLOPS_MONITORING_DB_URL"] == api_env["MEDMLOPS_MONITORING_DB_URL"], "one database, API and workers"
    assert not any(arg.startswith("--db-url") for arg in container["command"]), "a password in argv is in /proc"
    tracking = {"name": params.kubeflow.mlflow_secret, "key": "tracking-uri"}
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"] == tracking, "models come from the registry"
    assert "MEDMLOPS_MONITORING_TOKEN" not in env, "a worker writes to the database, never to the HTTP API"
    threads = {"containerName": container["name"], "resource": "limits.cpu", "divisor": "1"}
    assert env["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"] == threads
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    assert "nvidia.com/gpu" not in container["resources"]["limits"] and "nodeSelector" not in pod, "CPU by default"
    # Nothing calls a worker: no port, no Service; it calls PostgreSQL and MLflow through the deny-all.
    assert not container.get("ports")
    services = [d for d in BASE_DOCS if d["kind"] == "Service"]
    assert not [s for s in services if _selector_matches({"matchLabels": s["spec"]["selector"]}, _pod_labels(worker))]
    for name in ("postgres-from-clients", "mlflow-from-clients"):
        peers = [peer for rule in _find("NetworkPolicy", name)["spec"]["ingress"] for peer in rule["from"]]
        assert any(
            "namespaceSelector" not in peer and _selector_matches(peer["podSelector"], _pod_labels(worker))
            for peer in peers
            if "podSelector" in peer
        ), f"{name} does not let the workers in"


@pytest.mark.parametrize(("age_s", "healthy"), [(5, True), (600, False), (None, False)], ids=["fresh", "stale", "none"])
def test_monitoring_worker_probes_follow_its_heartbeat(tmp_path, age_s, healthy):
    """The probes run as written in the manifest (python from this venv): a fresh heartbeat passes, a stale or
    missing one fails."""
    container = _pod_spec(_worker())["containers"][0]
    heartbeat = {e["name"]: e for e in container["env"]}[HEARTBEAT_ENV]["value"]
    assert any(heartbeat.startswith(m["mountPath"] + "/") for m in container["volumeMounts"]), "a writable volume"
    commands = {
        tuple(container[probe]["exec"]["command"]) for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert len(commands) == 1, "one heartbeat check"
    command = list(commands.pop())
    assert command[0] == "python"
    beat = tmp_path / "heartbeat"
    if age_s is not None:
        beat.write_text("")
        os.utime(beat, (time.time() - age_s, time.time() - age_s))
    environment = {**os.environ, HEARTBEAT_ENV: str(beat)}
    done = subprocess.run([sys.executable, *command[1:]], env=environment, capture_output=True, text=True, timeout=60)
    assert (done.returncode == 0) == healthy, done.stderr


def _exported_metrics(tmp_path: Path) -> dict[str, str]:
    """Name → type of every metric family on the monitoring service's /metrics (a real, empty store)."""
    from medmlops.monitoring.metrics import MonitoringMetrics
    from medmlops.monitoring.store import Store

    store = Store(f"sqlite:///{tmp_path / 'monitoring.db'}")
    try:
        text, _ = MonitoringMetrics(store).render()
    finally:
        store.close()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text.decode(), flags=re.MULTILINE))


@pytest.mark.reliability(
    "Load",
    "INFORMER work outgrowing the workers (traffic bursts, a new model version)",
    "KEDA adds worker pods on the queue depth the monitoring service exports; a backlog alert when they cannot",
)
def test_workers_scale_on_the_queue_depth_the_monitoring_service_exports(tmp_path):
    scaled = _find("ScaledObject", "monitoring-worker")
    worker = _worker()
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "monitoring-worker",
    }
    assert worker["metadata"]["name"] == scaled["spec"]["scaleTargetRef"]["name"]
    hpas = [d for d in BASE_DOCS if d["kind"] == "HorizontalPodAutoscaler"]
    assert not [h for h in hpas if h["spec"]["scaleTargetRef"]["name"] == "monitoring-worker"], "KEDA makes the HPA"
    assert scaled["spec"]["minReplicaCount"] >= 1, "a worker is always up: flags follow the records within seconds"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    selectors = re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", query)
    assert selectors, query
    exported = _exported_metrics(tmp_path)
    monitor = _find("ServiceMonitor", "medmlops-monitoring")
    services = [d for d in BASE_DOCS if d["kind"] == "Service"]
    scraped = [
        s["metadata"]["name"]
        for s in services
        if _selector_matches(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert scraped == ["monitoring"]
    for metric, matchers in selectors:
        assert exported.get(metric) == "gauge", f"{metric}: not a gauge on the monitoring /metrics {sorted(exported)}"
        # Prometheus labels each target with its namespace and Service (the ServiceMonitor's).
        assert dict(re.findall(r'(\w+)="([^"]*)"', matchers)) == {"namespace": "medmlops", "service": scraped[0]}
    # The gauge reads the database at scrape time: every monitoring pod reports the whole queue. Max, not sum.
    assert re.match(r"sum\(max by \(family\) \(", query), query
    # The Prometheus KEDA asks is the one k8s/README.md installs, and KEDA is installed at a stated version.
    readme = (K8S / "README.md").read_text()
    assert trigger["metadata"]["serverAddress"] == "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
    assert "helm install kube-prometheus-stack prometheus-community/kube-prometheus-stack -n monitoring" in readme
    assert re.search(r"helm install keda kedacore/keda --version \d+\.\d+\.\d+ -n keda", readme)


def test_pipeline_data_volume_matches_params():
    kubeflow = load_params(REPO / "params.yaml").kubeflow
    pvc = _find("PersistentVolumeClaim", kubeflow.data_pvc, [d for _, d in _manifests(K8S / "pipelines")])
    assert pvc["metadata"]["namespace"] == "kubeflow"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "folds train in parallel on different nodes"
    readme = (K8S / "README.md").read_text()
    assert kubeflow.train.node_selector == {"medmlops.io/pool": "gpu"}
    assert "medmlops.io/pool=gpu" in readme and "nvidia.com/gpu=present:NoSchedule" in readme


# ---- rendered overlays and checkov (tools virtualenv) ---------------------------------------------------


def test_overlays_render_and_validate(rendered):
    params = load_params(REPO / "params.yaml")
    refs = {params.images.ref("train"), params.images.ref("serve")}
    for name, docs in rendered.items():
        for doc in docs:
            if doc["kind"] == "ScaledObject":
                _check_scaled_object(doc)
            if doc["kind"] in CRD_API_VERSIONS:
                continue
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            pod = _pod_spec(doc)
            for container, _ in _containers(pod) if pod else ():
                image = container["image"]
                assert "/" in image and ":" in image, f"{name}: {image} was not rewritten by kustomize images"
                if "medmlops" in image:
                    assert image in refs, f"{name}: {image} is not params.yaml's"
        if name == "pipelines":
            continue
        # What the patches must not undo: the serving spool on a PVC, the workers scaled by KEDA on the queue.
        for family in params.registry.gates:
            _spool_claim(_find("StatefulSet", family, docs))
        scaled = _find("ScaledObject", "monitoring-worker", docs)
        assert scaled["spec"]["scaleTargetRef"]["name"] == _worker(docs)["metadata"]["name"]
        assert _pod_spec(_worker(docs))["containers"][0]["command"][:3] == ["medmlops", "monitor", "worker"]


def test_dev_overlay_is_small_and_keeps_the_in_cluster_stores(rendered):
    dev = rendered["dev"]
    for doc in (d for d in dev if d["kind"] == "HorizontalPodAutoscaler"):
        assert doc["spec"]["minReplicas"] == 1 and doc["spec"]["maxReplicas"] <= 2
    for doc in (d for d in dev if d["kind"] == "PodDisruptionBudget"):
        assert "minAvailable" not in doc["spec"] and doc["spec"]["maxUnavailable"] == 1
    scaled = _find("ScaledObject", "monitoring-worker", dev)["spec"]
    assert scaled["minReplicaCount"] == 1 and scaled["maxReplicaCount"] <= 2
    _find("Deployment", "minio", dev)
    _find("StatefulSet", "postgres", dev)
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "medmlops" for d in dev)


def test_prod_overlay_scales_up_and_drops_minio(rendered):
    prod, base = rendered["prod"], BASE_DOCS
    for doc in (d for d in prod if d["kind"] == "HorizontalPodAutoscaler"):
        base_hpa = _find("HorizontalPodAutoscaler", doc["metadata"]["name"], base)
        assert doc["spec"]["maxReplicas"] > base_hpa["spec"]["maxReplicas"]
        pdb = _find("PodDisruptionBudget", doc["metadata"]["name"], prod)
        assert 2 <= pdb["spec"]["minAvailable"] < doc["spec"]["minReplicas"]
    assert not [d for d in prod if d["metadata"]["name"].startswith("minio")]
    settings = _find("ConfigMap", "medmlops-settings", prod)
    assert (
        settings["data"]["MLFLOW_ARTIFACTS_DESTINATION"]
        != _find("ConfigMap", "medmlops-settings")["data"]["MLFLOW_ARTIFACTS_DESTINATION"]
    )
    serving = _find("StatefulSet", "ich-prognosis", prod)["spec"]["template"]["spec"]["containers"][0]
    base_serving = _find("StatefulSet", "ich-prognosis")["spec"]["template"]["spec"]["containers"][0]
    assert _to_number(serving["resources"]["limits"]["memory"]) > _to_number(
        base_serving["resources"]["limits"]["memory"]
    )
    for family in load_params(REPO / "params.yaml").registry.gates:
        size = _spool_claim(_find("StatefulSet", family, prod))["spec"]["resources"]["requests"]["storage"]
        base_size = _spool_claim(_find("StatefulSet", family))["spec"]["resources"]["requests"]["storage"]
        assert _to_number(size) > _to_number(base_size), "room for a long monitoring outage"
    scaled, base_scaled = _find("ScaledObject", "monitoring-worker", prod), _find("ScaledObject", "monitoring-worker")
    assert scaled["spec"]["minReplicaCount"] >= 2, "one worker may be rescheduled at any time"
    assert scaled["spec"]["maxReplicaCount"] > base_scaled["spec"]["maxReplicaCount"]
    worker, base_worker = _worker(prod), _worker()
    limits = [_pod_spec(w)["containers"][0]["resources"]["limits"]["memory"] for w in (worker, base_worker)]
    assert _to_number(limits[0]) > _to_number(limits[1])


def test_gpu_worker_component_puts_the_workers_on_the_gpu_pool(rendered):
    """k8s/components/monitoring-worker-gpu on prod: the CUDA image, one GPU per worker, params.yaml's GPU pool."""
    params = load_params(REPO / "params.yaml")
    train = params.kubeflow.train
    gpu, prod = rendered["prod-gpu-worker"], rendered["prod"]
    pod = _pod_spec(_worker(gpu))
    container = pod["containers"][0]
    assert container["image"] == params.images.ref("train"), "torch's CUDA wheels are in the train image only"
    assert container["command"] == [*_pod_spec(_worker(prod))["containers"][0]["command"], "--device", "cuda"]
    assert container["resources"]["limits"][train.accelerator_type] == 1
    assert pod["nodeSelector"] == train.node_selector
    assert pod["tolerations"] == [
        {k: v for k, v in dataclasses.asdict(t).items() if v != ""} for t in train.tolerations
    ]
    # Only the workers change: the API and everything else render as in prod.
    changed = {(d["kind"], d["metadata"]["name"]) for d in gpu if d not in prod}
    assert changed == {("Deployment", "monitoring-worker"), ("ScaledObject", "monitoring-worker")}
    readme = (K8S / "README.md").read_text()
    assert "../../components/monitoring-worker-gpu" in readme


def _checkov(directory: Path, framework: str = "kubernetes") -> subprocess.CompletedProcess[str]:
    command = [str(_tool("checkov")), "-d", str(directory), "--framework", framework, "--quiet", "--compact"]
    return subprocess.run([*command, "--skip-download"], capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.reliability(
    "Security",
    "checkov on k8s/",
    "0 failed checks",
)
def test_checkov_passes_on_the_tree():
    done = _checkov(K8S)
    assert done.returncode == 0, f"checkov failed on k8s/:\n{done.stdout}\n{done.stderr[-3000:]}"
    assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0", done.stdout), done.stdout


@pytest.mark.reliability(
    "Security",
    "checkov on the rendered dev and prod overlays",
    "0 failed checks",
)
def test_checkov_passes_on_the_rendered_overlays(rendered, tmp_path):
    for name, docs in rendered.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    done = _checkov(tmp_path)
    assert done.returncode == 0, f"checkov failed on the rendered overlays:\n{done.stdout}\n{done.stderr[-3000:]}"
    assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0", done.stdout), done.stdout


@pytest.mark.reliability(
    "Security",
    "checkov on docker/",
    "0 failed checks",
)
def test_checkov_passes_on_the_dockerfiles():
    done = _checkov(REPO / "docker", framework="dockerfile")
    assert done.returncode == 0, f"checkov failed on docker/:\n{done.stdout}\n{done.stderr[-3000:]}"
    assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0", done.stdout), done.stdout


def _secret_scan(directory: Path) -> subprocess.CompletedProcess[str]:
    # pipelines/compiled/ is generated from pipelines/*.py and params.yaml (both scanned); its only findings were
    # Secret *key names* (secretKey: AWS_SECRET_ACCESS_KEY), and generated files cannot carry skip comments.
    command = [str(_tool("checkov")), "-d", str(directory), "--framework", "secrets", "--enable-secret-scan-all-files",
               "--quiet", "--compact", "--skip-download", "--skip-path", "pipelines/compiled"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=directory)


@pytest.mark.reliability(
    "Security",
    "checkov's secret scan over every tracked file (with a planted key as control)",
    "no secret found; the planted one is",
)
def test_no_secret_in_the_repository(tmp_path):
    """checkov's secret scan (detect-secrets rules: keys, tokens, private keys, high-entropy strings) over every file
    git tracks; a freshly generated AWS key id planted in a copy is the control that the scan can fail. The example
    .env files' placeholders carry ``checkov:skip`` comments with the reason (as the k8s manifests' skips do)."""
    import random
    import shutil
    import string

    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tree = tmp_path / "tree"
    for rel in filter(None, tracked.decode().split("\0")):
        source = REPO / rel
        if source.is_file() and not source.is_symlink():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / rel)
    assert (tree / "params.yaml").is_file()
    done = _secret_scan(tree)
    assert done.returncode == 0, f"secrets in the repository:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    control = tmp_path / "control"
    control.mkdir()
    key_id = "AKIA" + "".join(random.choices(string.ascii_uppercase + string.digits, k=16))
    (control / "deploy.env").write_text(f"AWS_ACCESS_KEY_ID={key_id}\n")
    planted = _secret_scan(control)
    assert planted.returncode == 1 and "deploy.env" in planted.stdout, planted.stdout[-2000:]


# ---- container images ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["train", "serve"])
def test_dockerfile_runs_the_project_as_a_non_root_user(kind):
    """One stage (no second copy of the virtualenv; tests/test_images.py checks the recipe's details): the project
    installed from the lock as root, then the image switches to uid 10001 with the offline and no-tracking flags."""
    text = (REPO / "docker" / f"{kind}.Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(stages) == 1 and ":" in stages[0] and not stages[0].endswith(":latest"), stages
    assert "useradd --uid 10001" in text and "WORKDIR /app" in text
    user = text.index("\nUSER 10001:10001")
    assert user > text.rindex("pip install"), "every install runs before the switch to the runtime user"
    for env in ("BENTOML_DO_NOT_TRACK=true", "HF_HUB_OFFLINE=1", "PYTHONUNBUFFERED=1", "MEDMLOPS_STATE_DIR="):
        assert env in text, env
    if kind == "serve":  # the servers' image; the train image runs batch steps
        assert "HEALTHCHECK --" in text[user:]
    assert "-c requirements.lock" in text, "dependencies are installed from the lock"


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[0] == "*", "an allow-list: everything out, then the project's files back in"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {
        "src",
        "params.yaml",
        "dvc.yaml",
        "data.dvc",
        ".dvc/config",
        "pyproject.toml",
        "requirements.lock",
    } <= allowed
    for private in (".venv", ".venv-tools", "data", "data/raw", ".medmlops", "reports", ".dvc/cache", ".git"):
        assert not any(a == private or a.startswith(private + "/") for a in allowed), private
    cluster = (REPO / "docker" / "requirements-cluster.txt").read_text().splitlines()
    pins = [ln for ln in cluster if ln and not ln.startswith("#")]
    assert pins and all(re.fullmatch(r"[\w.\-\[\]]+==[\w.]+", p) for p in pins), "exact pins only"


# ---- Grafana dashboard ----------------------------------------------------------------------------------------
#
# No JSON schema of Grafana's dashboard model is published as a package (Grafana keeps it in its own repository,
# as CUE/TypeScript), so the structure is checked here: what Grafana's sidecar import and panel rendering need.

DASHBOARD = BASE / "grafana" / "medmlops-dashboard.json"
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "table", "bargauge", "text"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Labels Prometheus adds from the ServiceMonitors' targets; the services themselves do not export them.
TARGET_LABELS = {"namespace", "service", "pod", "instance", "job", "endpoint", "container"}
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "rate", "irate", "increase", "time", "on",
                "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "histogram_quantile"}  # fmt: skip


def _dashboard() -> Doc:
    import json

    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: Doc) -> list[Doc]:
    """Every panel, those inside collapsed rows included."""
    return [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]


def _queries(dashboard: Doc) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]


def _selected_metrics(expr: str) -> set[str]:
    """The metric names an expression selects (``name{...}``)."""
    return set(re.findall(r"([a-zA-Z_:][\w:]*)\{", expr))


def _grouping_labels(expr: str) -> set[str]:
    """Labels an expression matches on or groups by."""
    labels = set(re.findall(r"(\w+)\s*(?:=~|!=|!~|=)\s*\"", expr))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {name.strip() for name in group.split(",") if name.strip()}
    return labels


def _check_dashboard(dashboard: Doc) -> list[str]:
    """What would make Grafana refuse the dashboard or draw a panel wrong; empty when none."""
    problems = []
    for key, kind in (("title", str), ("uid", str), ("schemaVersion", int), ("panels", list), ("templating", dict)):
        if not isinstance(dashboard.get(key), kind):
            problems.append(f"{key}: not a {kind.__name__}")
    if problems:
        return problems
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]):
        problems.append(f"uid {dashboard['uid']!r}: Grafana takes 1-40 of letters, digits, - and _")
    if dashboard["schemaVersion"] < 36:
        problems.append(f"schemaVersion {dashboard['schemaVersion']}: older than Grafana 9's datasource references")
    variables = {v.get("name") for v in dashboard["templating"].get("list", [])}
    ids, cells = [], set()
    for panel in _panels(dashboard):
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        ids.append(panel.get("id"))
        if not isinstance(panel.get("id"), int):
            problems.append(f"{where}: no integer id")
        if panel.get("type") not in PANEL_TYPES:
            problems.append(f"{where}: type {panel.get('type')!r}")
        if not panel.get("title"):
            problems.append(f"{where}: no title")
        grid = panel.get("gridPos") or {}
        if set(grid) != {"h", "w", "x", "y"} or not all(isinstance(v, int) and v >= 0 for v in grid.values()):
            problems.append(f"{where}: gridPos {grid}")
            continue
        if grid["w"] < 1 or grid["h"] < 1 or grid["x"] + grid["w"] > 24:
            problems.append(f"{where}: gridPos {grid} outside the 24-column grid")
        mine = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        if mine & cells:
            problems.append(f"{where}: overlaps another panel")
        cells |= mine
        if panel["type"] == "row":
            continue
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{where}: datasource {panel.get('datasource')} (the $datasource variable expected)")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{where}: no targets")
        if len({t.get("refId") for t in targets}) != len(targets):
            problems.append(f"{where}: refIds not unique")
        for target in targets:
            expr = target.get("expr")
            if target.get("datasource") != DATASOURCE or not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where}: target {target.get('refId')} without datasource or expr")
                continue
            if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                problems.append(f"{where}: unbalanced brackets in {expr!r}")
            for name in set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval", "__interval", "__range"}:
                if name not in variables:
                    problems.append(f"{where}: ${name} is not a dashboard variable")
            selected = _selected_metrics(expr)
            bare = set(re.findall(r"\b((?:medmlops|bentoml)_\w+)\b", expr)) - selected
            if bare:
                problems.append(f"{where}: {sorted(bare)} selected without a namespace matcher")
            for selector in re.findall(r"[a-zA-Z_:][\w:]*\{([^}]*)\}", expr):
                if 'namespace="medmlops"' not in selector:
                    problems.append(f'{where}: a selector without namespace="medmlops": {{{selector}}}')
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        problems.append(f"panel ids not unique: {duplicates}")
    return problems


def test_grafana_dashboard_is_well_formed():
    dashboard = _dashboard()
    assert _check_dashboard(dashboard) == []
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    # The panels the platform is watched on.
    titles = " | ".join(p["title"] for p in _panels(dashboard))
    for wanted in ("Request rate per serving service", "5xx share per serving service", "INFORMER flag rate per class",
                   "Out-of-distribution rate", "Estimated vs realized performance", "Drift share", "Drift report age",
                   "queue depth"):  # fmt: skip
        assert wanted in titles, wanted
    queries = " ".join(_queries(dashboard))
    assert re.search(r'bentoml_service_request_total\{namespace="medmlops", http_response_code=~"5\.\."\}', queries)
    assert "time() - max by (family) (medmlops_drift_report_timestamp_seconds{" in queries


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda d: d["panels"][1].update(id=d["panels"][2]["id"]), "ids not unique"),
        (lambda d: d["panels"][1].pop("gridPos"), "gridPos"),
        (lambda d: d["panels"][1]["gridPos"].update(x=20), "outside the 24-column grid"),
        (lambda d: d["panels"][2]["gridPos"].update(x=0), "overlaps"),
        (lambda d: d["panels"][1].update(datasource={"type": "prometheus", "uid": "prom"}), "datasource"),
        (lambda d: d["panels"][1].update(targets=[]), "no targets"),
        (lambda d: d["panels"][1]["targets"][0].update(expr="rate(x[5m]"), "unbalanced"),
        (lambda d: d["panels"][1]["targets"][0].update(expr='sum(medmlops_x{family=~"$fam"})'), "namespace"),
        (lambda d: d["panels"][1]["targets"][0].update(expr='medmlops_x{namespace="medmlops", f=~"$fam"}'), "$fam"),
        (lambda d: d.update(schemaVersion="39"), "schemaVersion"),
        (lambda d: d.update(uid="a/b"), "uid"),
    ],
)
def test_grafana_dashboard_check_rejects_what_grafana_would(mutation, message):
    dashboard = _dashboard()
    mutation(dashboard)
    assert any(message in problem for problem in _check_dashboard(dashboard)), _check_dashboard(dashboard)


def test_grafana_dashboard_ships_as_a_configmap_the_sidecar_loads(rendered):
    import json

    base = _kustomization(BASE)
    (generator,) = [g for g in base["configMapGenerator"] if g["name"] == "medmlops-grafana-dashboard"]
    assert [(BASE / f).resolve() for f in generator["files"]] == [DASHBOARD.resolve()]
    for overlay in ("dev", "prod"):
        maps = [d for d in rendered[overlay] if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get(
            "grafana_dashboard") == "1"]  # fmt: skip
        assert len(maps) == 1, overlay
        (config_map,) = maps
        # A fixed name (no hash suffix): an update replaces the dashboard rather than adding a second one.
        assert config_map["metadata"]["name"] == "medmlops-grafana-dashboard"
        assert config_map["metadata"]["namespace"] == "medmlops"
        assert json.loads(config_map["data"]["medmlops-dashboard.json"]) == _dashboard()
    readme = (K8S / "README.md").read_text()
    assert "grafana_dashboard" in readme and "medmlops-grafana-dashboard" in readme


def _bentoml_request_counter() -> tuple[str, set[str]]:
    """The request counter BentoML 1.4's new-style services export: the metrics namespace of its v2 default
    configuration + the HTTP middleware's counter name, and the counter's labels (read from the installed BentoML)."""
    import inspect

    import bentoml._internal.server.http.instruments as instruments

    defaults = Path(instruments.__file__).parents[2] / "configuration" / "v2" / "default_configuration.yaml"
    namespace = yaml.safe_load(defaults.read_text())["services"]["metrics"]["namespace"]
    source = inspect.getsource(instruments.HTTPTrafficMetricsMiddleware)
    counter = re.search(r"self\.metrics_request_total = metrics_client\.Counter\((.*?)\n        \)", source, re.S)
    assert counter, "BentoML's HTTP middleware has no metrics_request_total counter"
    name = re.search(r'name="(\w+)"', counter.group(1)).group(1)
    labels = set(re.findall(r'"(\w+)"', counter.group(1).split("labelnames=", 1)[1]))
    # prometheus_client drops a Counter name's "_total" and puts it back on the sample: one "_total".
    return f"{namespace}_{name.removesuffix('_total')}_total", labels


def test_grafana_dashboard_queries_metrics_the_services_export(tmp_path):
    """Every metric a panel queries exists on the monitoring service's /metrics (a live server, fed records, labels
    and a drift report) with the labels the query uses, or is BentoML's request counter (checked by name and labels
    against the installed BentoML: serving's own tests run the real server)."""
    from medmlops.monitoring.store import Store
    from tests.monitoring.records import UNSURE, call, make_record, start_monitor, wait_for

    dashboard = _dashboard()
    variables = [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert variables and all(v.startswith("label_values(") for v in variables)
    queries = _queries(dashboard) + variables  # a variable's values come from a metric too
    wanted = set().union(*map(_selected_metrics, queries))
    bentoml_counter, bentoml_labels = _bentoml_request_counter()
    assert bentoml_counter == "bentoml_service_request_total"
    server = start_monitor(tmp_path, "--batch-size", "4")
    try:
        ids = [f"grafana-{i}" for i in range(6)]
        for i, request_id in enumerate(ids):
            record = make_record(request_id, logits=UNSURE if i % 2 else (2.0, -2.0))
            record.update(in_distribution=i != 0, ood={"score": 9.0 if i == 0 else 1.0, "threshold": 4.0})
            assert call(f"{server.url}/records", method="POST", body=record)[0] == 202
        assert wait_for(lambda: all(call(f"{server.url}/v1/records/{r}")[1]["status"] == "done" for r in ids), 60)
        for i, request_id in enumerate(ids):
            labels = {"findings/Atelectasis": i % 2, "findings/Pleural Effusion": (i // 2) % 2}
            assert (
                call(f"{server.url}/v1/labels", method="POST", body={"request_id": request_id, "labels": labels})[0]
                == 200
            )
        store = Store(server.db_url)
        try:
            store.add_drift_report("cxr-findings", {"drift_share": 0.1, "detected": False, "n_current": 6,
                                                    "n_reference": 10, "created_at": time.time()})  # fmt: skip
        finally:
            store.close()
        status, text, _ = call(f"{server.url}/metrics")
    finally:
        server.stop()
    assert status == 200
    samples: dict[str, set[str]] = {}
    for name, labels in re.findall(r"^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? ", text.decode(), flags=re.MULTILINE):
        samples.setdefault(name, set()).update(re.findall(r'(\w+)="', labels))
    for metric in sorted(wanted):
        used = set().union(*(_grouping_labels(q) for q in queries if metric in _selected_metrics(q))) - TARGET_LABELS
        used |= {label for q in variables if metric in _selected_metrics(q) for label in re.findall(r", *(\w+)\)$", q)}
        if metric == bentoml_counter:
            assert used <= bentoml_labels, (metric, used - bentoml_labels)
            continue
        assert metric in samples, f"{metric}: no series on the monitoring /metrics ({sorted(samples)})"
        assert used <= samples[metric], f"{metric}: the dashboard uses labels {sorted(used - samples[metric])} it lacks"
    # What the dashboard leaves out: BentoML's own request counter aside, every name comes from the monitoring service.
    assert {m for m in wanted if not m.startswith("medmlops_")} == {bentoml_counter}
