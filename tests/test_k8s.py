"""Offline checks of the Kubernetes tree (k8s/): YAML, kustomize consistency both ways, Kubernetes schemas
(strict), security settings of every container, images against params.yaml, Secrets only referenced,
the overlays rendered by `kubectl kustomize`, and checkov.

kubectl and checkov come from the tools virtualenv (.venv-tools, `make tools`),
never from .venv: checkov pins old packaging, dpath, networkx, cachetools and importlib_metadata.
"""

from __future__ import annotations

import re
import subprocess
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
CRD_API_VERSIONS = {"ServiceMonitor": "monitoring.coreos.com/v1", "PrometheusRule": "monitoring.coreos.com/v1"}
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
RENDERABLE = [*OVERLAYS, K8S / "pipelines"]


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


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {d.name: _render(d) for d in RENDERABLE}


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
    assert spec["kind"] == "Kustomization"
    for resource in spec.get("resources", []):
        target = kustomization.parent / resource
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{resource} does not exist"
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
    assert patch_files <= _patch_files(), f"unused patch files: {sorted(map(_rel, patch_files - _patch_files()))}"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=_rel)
def test_overlay_patches_target_resources_that_exist_in_base(overlay):
    spec = _kustomization(overlay)
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


def test_custom_resources_have_no_bundled_schema_and_are_checked_structurally():
    crds = [d for _, d in MANIFESTS if d["kind"] in CRD_API_VERSIONS]
    assert {d["kind"] for d in crds} == set(CRD_API_VERSIONS)
    for doc in crds:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
        assert doc["apiVersion"] == CRD_API_VERSIONS[doc["kind"]]
        assert doc["metadata"]["namespace"] == "medmlops" and doc["metadata"]["name"]
        assert "release" in doc["metadata"]["labels"], "Prometheus selects rules and monitors by label"


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
    for metric in ("medmlops_informer_flag_rate", "medmlops_drift_share", "bentoml_service_request_total"):
        assert metric in expressions, f"no alert on {metric}"
    assert re.search(r'http_response_code=~"5\.\."', expressions), "no 5xx alert on BentoML requests"


# ---- images, secrets ------------------------------------------------------------------------------------


def test_base_images_equal_params_images():
    images = load_params(REPO / "params.yaml").images
    pinned = {i["name"]: i for i in _kustomization(BASE)["images"]}
    assert set(pinned) == {images.train, images.serve}
    for kind in ("train", "serve"):
        entry = pinned[getattr(images, kind)]
        assert f"{entry['newName']}:{entry['newTag']}" == images.ref(kind)
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


@pytest.mark.parametrize("family", sorted(load_params(REPO / "params.yaml").registry.gates))
def test_serving_family_deployment_service_hpa_pdb(family):
    params = load_params(REPO / "params.yaml")
    deployment = _find("Deployment", family)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == params.images.serve
    assert container["command"] == [
        "medmlops", "serve", family, "--alias", "champion", "--host", "0.0.0.0", "--port", "3000",
        "--spool-dir", "/var/spool/medmlops",
    ]  # fmt: skip
    assert {"name": "spool", "mountPath": "/var/spool/medmlops"} in container["volumeMounts"]
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
    assert _selector_matches({"matchLabels": service["spec"]["selector"]}, _pod_labels(deployment))
    hpa = _find("HorizontalPodAutoscaler", family)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": family}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = _find("PodDisruptionBudget", family)
    assert _selector_matches(pdb["spec"]["selector"], _pod_labels(deployment))
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a PDB at minReplicas blocks every drain"


def test_platform_commands():
    commands = {d["metadata"]["name"]: _pod_spec(d)["containers"][0].get("command") for d in _workloads()}
    assert commands["monitoring"] == ["medmlops", "monitor", "serve", "--host", "0.0.0.0", "--port", "8080"]
    # Beyond loopback the service refuses to start without a write token; serving sends the same one.
    for name in ("monitoring", "cxr-findings", "ich-prognosis", "covid-prognosis"):
        env = {e["name"]: e for e in _pod_spec(_find("Deployment", name))["containers"][0]["env"]}
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
    # Every long-running workload is reachable by someone (else its port is dead behind the deny-all)...
    allowed = [p for p in policies if p is not deny]
    for doc in _workloads():
        if doc["kind"] in ONE_SHOT_KINDS or doc["metadata"]["name"] == "evidently-ui":  # UI: port-forward only
            continue
        assert any(_selector_matches(p["spec"]["podSelector"], _pod_labels(doc)) for p in allowed), doc["metadata"]
    # ... and the pipelines (namespace kubeflow) reach MLflow.
    mlflow_rule = _find("NetworkPolicy", "mlflow-from-clients")["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}}} in mlflow_rule


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
            if doc["kind"] in CRD_API_VERSIONS:
                continue
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            pod = _pod_spec(doc)
            for container, _ in _containers(pod) if pod else ():
                image = container["image"]
                assert "/" in image and ":" in image, f"{name}: {image} was not rewritten by kustomize images"
                if "medmlops" in image:
                    assert image in refs, f"{name}: {image} is not params.yaml's"


def test_dev_overlay_is_small_and_keeps_the_in_cluster_stores(rendered):
    dev = rendered["dev"]
    for doc in (d for d in dev if d["kind"] == "HorizontalPodAutoscaler"):
        assert doc["spec"]["minReplicas"] == 1 and doc["spec"]["maxReplicas"] <= 2
    for doc in (d for d in dev if d["kind"] == "PodDisruptionBudget"):
        assert "minAvailable" not in doc["spec"] and doc["spec"]["maxUnavailable"] == 1
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
    serving = _find("Deployment", "ich-prognosis", prod)["spec"]["template"]["spec"]["containers"][0]
    base_serving = _find("Deployment", "ich-prognosis")["spec"]["template"]["spec"]["containers"][0]
    assert _to_number(serving["resources"]["limits"]["memory"]) > _to_number(
        base_serving["resources"]["limits"]["memory"]
    )


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
    text = (REPO / "docker" / f"{kind}.Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(stages) == 2 and all(":" in s and not s.endswith(":latest") for s in stages), stages
    runtime = text[text.rindex("\nFROM ") :]  # the last stage is the image
    assert "USER 10001:10001" in runtime and "useradd --uid 10001" in runtime
    assert "WORKDIR /app" in runtime and "COPY --from=builder /opt/venv /opt/venv" in runtime
    for env in ("BENTOML_DO_NOT_TRACK=true", "HF_HUB_OFFLINE=1", "PYTHONUNBUFFERED=1"):
        assert env in runtime, env
    assert "HEALTHCHECK" in runtime
    assert "-c requirements.lock" in text, "dependencies are installed from the lock"


def test_serve_image_takes_the_locked_torch_from_the_cpu_index():
    text = (REPO / "docker" / "serve.Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text
    assert "s/^torch==//p' requirements.lock" in text and "+cpu" in text
    lock = (REPO / "requirements.lock").read_text()
    assert re.search(r"^torch==\d", lock, flags=re.MULTILINE), "requirements.lock pins torch"


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
