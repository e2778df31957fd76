"""The compiled pipelines: current with the code, valid PipelineSpecs, and their cluster configuration (GPU, node
pool, volume, secrets, image, caching) as params.yaml sets it. Offline and fast."""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from medmlops.cli import main
from medmlops.config import load_params
from tests.conftest import REPO

sys.path.insert(0, str(REPO))
PIPELINES = ("ich", "covid", "cxr")
PARAMS = load_params(REPO / "params.yaml")
CONTEXT_INPUTS = {"workdir", "profile", "overrides", "mlflow_uri"}


def _docs(name: str) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all((REPO / "pipelines" / "compiled" / f"{name}.yaml").read_text())
    return spec, platform


@pytest.mark.parametrize("name", PIPELINES)
def test_checked_in_yaml_is_current(name, tmp_path):
    """Fails when a component, a pipeline or params.yaml changed without `medmlops pipeline compile all`."""
    assert main(["pipeline", "compile", name, "--out", str(tmp_path), "--repo", str(REPO)]) == 0
    fresh = (tmp_path / f"{name}.yaml").read_text()
    assert fresh == (REPO / "pipelines" / "compiled" / f"{name}.yaml").read_text(), (
        f"pipelines/compiled/{name}.yaml is stale: run `medmlops pipeline compile {name}` and commit it"
    )


@pytest.mark.parametrize("name", PIPELINES)
def test_compiled_yaml_parses_as_pipeline_and_platform_spec(name):
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec, platform = _docs(name)
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    assert parsed.pipeline_info.name == f"medmlops-{name}"
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == {
        "profile",
        "experiments",
        "data_rev",
        "data_remote",
        "mlflow_uri",
        "image",
        "workdir",
        "overrides",
        "nproc",
    }
    assert inputs["image"]["defaultValue"] == PARAMS.images.ref("train") == "ghcr.io/medmlops/medmlops-train:0.1.0"
    assert inputs["overrides"]["defaultValue"] == list(PARAMS.kubeflow.overrides)
    assert inputs["workdir"]["defaultValue"] == PARAMS.kubeflow.workdir


@pytest.mark.parametrize("name", PIPELINES)
def test_steps_and_fan_outs(name):
    """validate → preprocess → ParallelFor(experiments) { splits → ParallelFor(folds) { train } → aggregate → evaluate →
    register → calibrate → promote }, with no dsl.Collected and no dsl.If anywhere."""
    spec, _ = _docs(name)
    executors = set(spec["deploymentSpec"]["executors"])
    assert executors == {
        f"exec-{s}"
        for s in ("validate-data", "preprocess", "make-splits", "train-fold", "aggregate", "evaluate", "register",
                  "calibrate", "promote")
    }  # fmt: skip
    root = spec["root"]["dag"]["tasks"]
    assert root["preprocess"]["dependentTasks"] == ["validate-data"]
    loop = root["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--experiments"
    experiment = spec["components"]["comp-experiment"]["dag"]["tasks"]
    assert experiment["aggregate"]["dependentTasks"] == ["train-folds"]
    assert experiment["register"]["dependentTasks"] == ["evaluate"]
    assert experiment["calibrate"]["dependentTasks"] == ["register"]
    assert sorted(experiment["promote"]["dependentTasks"]) == [
        "calibrate",
        "register",
    ]  # gates see a calibrated version
    folds = spec["components"]["comp-train-folds"]["dag"]["tasks"]
    (fold_loop,) = folds.values()
    assert fold_loop["iteratorPolicy"]["parallelismLimit"] == PARAMS.kubeflow.fold_parallelism
    text = json.dumps(spec)
    assert "triggerPolicy" not in text and "Collected" not in text  # no dsl.If / dsl.Collected


@pytest.mark.parametrize("name", PIPELINES)
def test_train_step_asks_for_the_gpu_pool_from_params(name):
    spec, platform = _docs(name)
    train = PARAMS.kubeflow.train
    container = spec["deploymentSpec"]["executors"]["exec-train-fold"]["container"]
    resources = container["resources"]
    assert resources["accelerator"]["resourceType"] == train.accelerator_type == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == str(train.accelerator_count)
    assert (resources["resourceCpuRequest"], resources["resourceCpuLimit"]) == (train.cpu_request, train.cpu_limit)
    assert (resources["resourceMemoryRequest"], resources["resourceMemoryLimit"]) == (
        train.memory_request,
        train.memory_limit,
    )
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-fold"]
    assert k8s["nodeSelector"]["labels"] == dict(train.node_selector) == {"medmlops.io/pool": "gpu"}
    assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # Every other step is a CPU step with the step resources, off the GPU pool.
    step = PARAMS.kubeflow.step
    for executor, body in spec["deploymentSpec"]["executors"].items():
        if executor == "exec-train-fold":
            continue
        assert "accelerator" not in body["container"]["resources"], executor
        assert body["container"]["resources"]["resourceMemoryLimit"] == step.memory_limit
        assert "nodeSelector" not in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor]


@pytest.mark.parametrize("name", PIPELINES)
def test_every_step_mounts_the_data_volume_and_reads_secrets_never_literals(name):
    spec, platform = _docs(name)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == set(spec["deploymentSpec"]["executors"])
    for executor, config in k8s.items():
        assert config["pvcMount"][0]["constant"] == PARAMS.kubeflow.data_pvc
        assert config["pvcMount"][0]["mountPath"] == PARAMS.kubeflow.data_mount
        env = {e["envVar"]: (s["secretName"], e["secretKey"]) for s in config["secretAsEnv"] for e in s["keyToEnv"]}
        assert env["MLFLOW_TRACKING_URI"] == (PARAMS.kubeflow.mlflow_secret, "tracking-uri"), executor
        assert env["AWS_SECRET_ACCESS_KEY"] == (PARAMS.kubeflow.s3_secret, "AWS_SECRET_ACCESS_KEY"), executor
    for body in spec["deploymentSpec"]["executors"].values():
        container = body["container"]
        assert container["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}"  # the `image` input
        assert not container.get("env"), "no literal environment (credentials come from Secrets)"
    text = (REPO / "pipelines" / "compiled" / f"{name}.yaml").read_text()
    assert not re.search(
        r"(?i)(password|secret_access_key)\s*[:=]\s*\S+[^{]", text.replace("secretKey: AWS_SECRET_ACCESS_KEY", "")
    )


@pytest.mark.parametrize("name", PIPELINES)
def test_components_run_the_project_image_without_installing_anything(name):
    spec, _ = _docs(name)
    for executor, body in spec["deploymentSpec"]["executors"].items():
        command = " ".join(body["container"]["command"])
        assert "pip install" not in command, executor
        assert "kfp.dsl.executor_main" in command, executor
        assert "from medmlops.pipeline_steps import" in command, executor  # one call into the core


@pytest.mark.parametrize("name", PIPELINES)
def test_only_data_steps_are_cached(name):
    """Validation and preprocessing are reused on re-runs with the same inputs (the data version is one of them);
    steps that create MLflow runs or register models never are."""
    spec, _ = _docs(name)

    def caching(tasks: dict) -> dict:
        return {
            t: body.get("cachingOptions", {}).get("enableCache", False)
            for t, body in tasks.items()
            if "componentRef" in body and not t.startswith(("for-loop", "train-folds", "experiment"))
        }

    root = caching(spec["root"]["dag"]["tasks"])
    assert root == {"validate-data": True, "preprocess": True}
    assert set(caching(spec["components"]["comp-experiment"]["dag"]["tasks"]).values()) == {False}
    (fold_loop,) = spec["components"]["comp-train-folds"]["dag"]["tasks"].values()
    loop = spec["components"][fold_loop["componentRef"]["name"]]["dag"]["tasks"]["train-fold"]
    assert loop.get("cachingOptions", {}).get("enableCache", False) is False
    assert loop["retryPolicy"]["maxRetryCount"] == 2


# ---------------------------------------------------------------------------------------------------------------------
# Submission with kfp.Client, against a recording HTTP endpoint on 127.0.0.1 (no Kubeflow API can run here).
# ---------------------------------------------------------------------------------------------------------------------


class _KfpApi(BaseHTTPRequestHandler):
    """The few KFP v2beta1 endpoints kfp.Client calls to submit a run; records what it receives."""

    calls: list[tuple[str, str, dict]] = []

    def log_message(self, *args):
        pass

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.calls.append(("GET", self.path, {}))
        if self.path.startswith("/apis/v2beta1/healthz"):
            return self._reply({"multi_user": False})
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._reply({"experiments": [], "total_size": 0})
        return self._reply({"error": f"unexpected GET {self.path}"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.calls.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            return self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        if self.path == "/apis/v2beta1/runs":
            return self._reply({"run_id": "run-1", "display_name": body.get("display_name"), "experiment_id": "exp-1"})
        if self.path == "/apis/v2beta1/recurringruns":
            return self._reply({"recurring_run_id": "rec-1", "display_name": body.get("display_name")})
        return self._reply({"error": f"unexpected POST {self.path}"}, 404)


@pytest.fixture
def kfp_api():
    _KfpApi.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _KfpApi.calls
    finally:
        server.shutdown()


def test_run_host_submits_the_compiled_spec_with_parameters(kfp_api, capfd):
    host, calls = kfp_api
    argv = ["pipeline", "run", "ich", "--host", host, "--profile", "paper", "--tag", "1.2.3", "--data-rev",
            "0123456789abcdef0123456789abcdef.dir", "--data-remote", "s3://medmlops-dvc", "--run-name", "ich-paper",
            "--repo", str(REPO), "--params", str(REPO / "params.yaml")]  # fmt: skip
    assert main(argv) == 0
    assert "submitted to" in capfd.readouterr().out
    (_, _, run), *_ = [c for c in calls if c[:2] == ("POST", "/apis/v2beta1/runs")]
    assert run["display_name"] == "ich-paper" and run["experiment_id"] == "exp-1"
    compiled, platform = _docs("ich")
    assert run["pipeline_spec"]["pipeline_spec"] == compiled  # the checked-in spec, as compiled
    assert run["pipeline_spec"]["platform_spec"] == platform  # with its GPU, volume and secret settings
    parameters = run["runtime_config"]["parameters"]
    assert parameters["profile"] == "paper"
    assert parameters["image"] == "ghcr.io/medmlops/medmlops-train:1.2.3"
    assert parameters["experiments"] == ["ich-mt-ord"]
    assert parameters["data_rev"] == "0123456789abcdef0123456789abcdef.dir"
    assert parameters["data_remote"] == "s3://medmlops-dvc"
    assert parameters["overrides"] == list(PARAMS.kubeflow.overrides)
    (_, _, experiment), *_ = [c for c in calls if c[:2] == ("POST", "/apis/v2beta1/experiments")]
    assert experiment["display_name"] == PARAMS.kubeflow.experiment


def test_run_host_recurring(kfp_api, capfd):
    host, calls = kfp_api
    argv = ["pipeline", "run", "cxr", "--host", host, "--recurring", "0 3 * * 0", "--experiment-name", "weekly",
            "--repo", str(REPO), "--params", str(REPO / "params.yaml")]  # fmt: skip
    assert main(argv) == 0
    assert "recurring run rec-1" in capfd.readouterr().out
    (_, _, job), *_ = [c for c in calls if c[:2] == ("POST", "/apis/v2beta1/recurringruns")]
    assert job["trigger"]["cron_schedule"]["cron"] == "0 3 * * 0"
    assert job["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "medmlops-cxr"


def test_run_needs_a_place_to_run(capfd):
    assert main(["pipeline", "run", "ich", "--repo", str(REPO), "--params", str(REPO / "params.yaml")]) == 1
    assert "--local" in capfd.readouterr().err


def test_unreachable_host_is_one_clear_error(capfd):
    argv = [
        "pipeline",
        "run",
        "ich",
        "--host",
        "http://127.0.0.1:9",
        "--repo",
        str(REPO),
        "--params",
        str(REPO / "params.yaml"),
    ]
    assert main(argv) == 1
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("medmlops: error:")]
    assert len(errors) == 1 and "cannot reach the Kubeflow Pipelines API at http://127.0.0.1:9" in errors[0]


def test_pipelines_module_found_from_a_data_project(tmp_path, capfd):
    """A project folder with only params.yaml and data uses the pipelines of the installed checkout."""
    (tmp_path / "params.yaml").write_text(Path(REPO / "params.yaml").read_text())
    assert main(["pipeline", "compile", "cxr", "--out", str(tmp_path / "out"), "--repo", str(tmp_path)]) == 0
    assert (tmp_path / "out" / "cxr.yaml").is_file()


@pytest.mark.parametrize(
    ("cores", "experiments", "overrides", "threads"),
    [
        (8, ["ich-mt-ord"], ["train.n_folds=2"], 4),  # 2 folds at once
        (8, ["ich-mt-ord"], ["train.n_folds=5"], 4),  # kfp's local runner runs at most 2 iterations of a loop at once
        (8, ["a", "b", "c"], ["train.n_folds=2"], 2),  # 2 experiments x 2 folds
        (8, ["ich-mt-ord"], ["train.n_folds=5", "train.folds=[3]"], 8),  # one fold: every core
        (2, ["a", "b"], ["train.n_folds=3"], 1),  # never below one
    ],
)
def test_local_run_divides_the_cores_among_the_folds_it_trains_at_once(cores, experiments, overrides, threads,
                                                                       monkeypatch):  # fmt: skip
    from pipelines.run import fold_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    arguments = {"workdir": str(REPO), "profile": "demo", "overrides": overrides, "experiments": experiments}
    assert fold_threads(arguments) == threads
