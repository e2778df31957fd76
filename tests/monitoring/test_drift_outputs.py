"""Where a drift report goes besides its summary: the HTML's size (Evidently's bundle shared, no duplicated graphs),
the Evidently workspace's project dashboard as ``evidently ui`` serves it (the real server on 127.0.0.1), the MLflow
run per window linked to the model version (a real SQLite tracking store), and the monitoring service's route for
the files the HTML loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import mlflow
import mlflow.tracking._model_registry.utils as registry_utils
import mlflow.tracking._tracking_service.utils as tracking_utils
import pytest
from mlflow import MlflowClient

from medmlops.config import RegistryConfig
from medmlops.monitoring.drift import DASHBOARD_PANELS, LIB_DIR, drift_report, lib_files, write_html

from ..browser import CHROMIUM, CHROMIUM_ARGS
from ..conftest import _free_port, stop_process
from .test_drift import CLASSES, _store_record, features

os.environ.setdefault("DO_NOT_TRACK", "1")
pytestmark = pytest.mark.timeout(300)
FAMILY = "cxr-findings"


@pytest.fixture(scope="module")
def reference():
    return features(200, seed=1000)


def _embedded(html: str) -> tuple[dict, dict]:
    """The dashboard and the additional-graphs map a report page embeds."""
    found = re.search(
        r"var (metric_\w+) = (\{.*?\});\s*var additional_graphs_\1 = (\{.*?\});\s*</script>", html, flags=re.S
    )
    assert found, "no embedded dashboard data"
    return json.loads(found.group(2)), json.loads(found.group(3))


def _nested_graphs(widget: dict) -> int:
    return len(widget.get("additionalGraphs") or []) + sum(_nested_graphs(w) for w in widget.get("widgets") or [])


def test_report_html_loads_the_shared_bundle_and_holds_each_graph_once(reference, tmp_path):
    summary = drift_report(reference, features(50, seed=3, shift=1.0, labels=True), family=FAMILY, out_dir=tmp_path)
    html = summary.html_path.read_text()
    bundle = lib_files()
    assert {p.stat().st_size for p in bundle.values()} and max(p.stat().st_size for p in bundle.values()) > 3_000_000
    # The 3.5 MB bundle and the icon font are files beside the report, loaded by relative URL, not inlined.
    for name, source in bundle.items():
        copied = tmp_path / LIB_DIR / name
        assert copied.read_bytes() == source.read_bytes()
    js = next(name for name in bundle if name.endswith(".js"))
    assert f'<script src="{LIB_DIR}/{js}"></script>' in html
    assert f"url({LIB_DIR}/material-ui-icons.woff2)" in html and "base64," not in html
    dashboard, graphs = _embedded(html)
    # Every details graph (per-column distributions) is in the map the page reads, and nowhere else.
    assert graphs and sum(_nested_graphs(w) for w in dashboard["widgets"]) == 0
    # Measured: Evidently's own save_html wrote 4.70 MB for this window (3.52 MB bundle, 0.13 MB font, 0.45 MB of
    # duplicated graphs); this page is about 0.6 MB.
    assert len(html) < 900_000, len(html)
    # The snapshot keeps the per-column plots once (in the report's widgets, not again in each metric's result).
    snapshot = json.loads(summary.json_path.read_text())
    assert all(result.get("widget") is None for result in snapshot["metric_results"].values())
    assert summary.json_path.stat().st_size < 900_000
    # A second report in the folder reuses the bundle; the self-contained form still exists on request.
    before = (tmp_path / LIB_DIR / js).stat().st_mtime_ns
    drift_report(reference, features(50, seed=4), family=FAMILY, out_dir=tmp_path)
    assert (tmp_path / LIB_DIR / js).stat().st_mtime_ns == before
    alone = tmp_path / "alone" / "report.html"
    alone.parent.mkdir()
    from evidently.core.report import Snapshot

    write_html(Snapshot.loads(summary.json_path.read_text()), alone, self_contained=True)
    assert "window.drawDashboard" in alone.read_text() and not (alone.parent / LIB_DIR).exists()
    assert 3_500_000 < alone.stat().st_size < 4_500_000


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _evidently_ui(workspace: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [str(Path(sys.executable).with_name("evidently")), "ui", "--workspace", str(workspace), "--host",
               "127.0.0.1", "--port", str(port)]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "DO_NOT_TRACK": "1"})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            _get_json(f"{url}/api/projects")
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError(f"evidently ui did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


def _series(ui: str, project_id: str, panel: dict) -> list[dict]:
    """The lines the UI draws for one panel: its values as series filters, posted as the UI posts them."""
    filters = [
        {key: value[key] for key in ("tags", "metadata", "metric", "metric_labels")} for value in panel["values"]
    ]
    request = urllib.request.Request(
        f"{ui}/api/v2/snapshots/{project_id}/data_series_batch", method="POST",
        data=json.dumps({"series_filter": filters}).encode(), headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["series"]


def test_evidently_ui_lists_the_projects_dashboard_panels_after_monitor_report(reference, tmp_path, monkeypatch):
    """``medmlops monitor report`` (its core) into a workspace, then the real ``evidently ui`` over it."""
    from medmlops.monitoring.drift import report_command
    from medmlops.monitoring.store import Store

    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    store = Store(url)
    now = time.time()
    for i, row in features(40, seed=31, shift=1.0, labels=True).iterrows():
        _store_record(store, f"r-{i}", "3", now - 60 + i, row)
    for i in range(30):  # labels came through for 30 records, both values of every class
        store.add_labels(f"r-{i}", {name: i % 2 for name in CLASSES})
    store.close()
    monkeypatch.setitem(
        sys.modules, "medmlops.informer.calibrate", types.SimpleNamespace(load_reference=lambda *a: reference)
    )
    workspace = tmp_path / "ws"
    args = types.SimpleNamespace(family=FAMILY, workspace=str(workspace), db_url=url, version=None, since_hours=None,
                                 last=None, out=None)  # fmt: skip
    assert report_command(args) == 0
    assert report_command(args) == 0  # a second window: same project, panels not added twice
    process, ui = _evidently_ui(workspace, tmp_path / "evidently-ui.log")
    try:
        projects = _get_json(f"{ui}/api/projects")
        (project,) = [p for p in projects if p["name"] == FAMILY]
        dashboard = _get_json(f"{ui}/api/v2/dashboards/{project['id']}")
        snapshots = _get_json(f"{ui}/api/projects/{project['id']}/snapshots")
        held = _get_json(f"{ui}/api/v2/snapshots/{project['id']}/metrics")["metrics"]
        # The UI's report view of each snapshot (the metric results carry no widgets: the report's widgets serve).
        views = [_get_json(f"{ui}/api/projects/{project['id']}/{s['id']}/data") for s in snapshots]
        # The series each panel draws, asked as the UI asks for them (one batch per panel).
        series = {panel["title"]: _series(ui, project["id"], panel) for panel in dashboard["panels"]}
    finally:
        stop_process(process)
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert titles == [title for title, *_ in DASHBOARD_PANELS]
    (tab,) = dashboard["tabs"]
    assert tab["title"] == "Drift" and set(map(str, tab["panels"])) == {str(p["id"]) for p in dashboard["panels"]}
    metrics = {value["metric"] for panel in dashboard["panels"] for value in panel["values"]}
    assert metrics == {f"evidently:metric_v2:{m}" for m in ("DriftedColumnsCount", "ValueDrift", "RocAuc", "F1Score")}
    assert len(snapshots) == 2
    for view in views:
        assert "Data drift: cxr-findings" in json.dumps(view) and "Classification quality" in json.dumps(view)
    # Every metric a panel plots is one the project's snapshots hold (labels exist here), so no panel stays empty.
    assert metrics <= set(held), held
    # Every panel has a line with a value from each of the two reports: the dashboard opens populated.
    for title, lines in series.items():
        assert lines and all(len(line["values"]) == 2 and None not in line["values"] for line in lines), title
    assert len(series["Per-feature drift (test score per column)"]) == 19  # one line per compared column
    assert len(series["Classification quality (labelled records): F1"]) == len(CLASSES)  # one per labelled class
    (share,) = series["Share of drifted features"]
    assert share["params"]["value_type"] == "share" and share["values"][-1] == pytest.approx(16 / 19)


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> RegistryConfig:
    """A SQLite MLflow store for this test; MLflow's process-wide URIs put back as they were after it."""
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return RegistryConfig(tracking_uri=uri, artifact_dir=str(tmp_path / "mlartifacts"), experiment_prefix="t")


def _register(family: str) -> tuple[str, str]:
    """A registered version backed by an MLflow 3 logged model (as ``register_model`` makes); (version, model_id)."""
    client = MlflowClient()
    model = mlflow.initialize_logged_model(name=family)
    client.create_registered_model(family)
    version = client.create_model_version(family, source=f"models:/{model.model_id}", model_id=model.model_id)
    return str(version.version), model.model_id


def test_monitor_report_logs_the_window_against_the_model_version(reference, tmp_path, monkeypatch, tracking):
    from medmlops.monitoring.drift import report_command
    from medmlops.monitoring.store import Store

    version, model_id = _register(FAMILY)
    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    store = Store(url)
    now = time.time()
    for i, row in features(40, seed=41, shift=1.5, labels=True, flag_rate=0.3).iterrows():
        _store_record(store, f"r-{i}", version, now - 60 + i, row)
    for i in range(30):
        store.add_labels(f"r-{i}", {name: (i // 2) % 2 for name in CLASSES})
    store.close()
    monkeypatch.setitem(
        sys.modules, "medmlops.informer.calibrate", types.SimpleNamespace(load_reference=lambda *a: reference)
    )
    args = types.SimpleNamespace(family=FAMILY, workspace=str(tmp_path / "ws"), db_url=url, version=None,
                                 since_hours=None, last=None, out=None)  # fmt: skip
    assert report_command(args, registry=tracking) == 0
    kept = Store(url).latest_drift(FAMILY)["summary"]

    client = MlflowClient()
    experiment = client.get_experiment_by_name("t-production")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["medmlops.family"] == FAMILY and run.data.tags["medmlops.model_version"] == version
    assert run.data.tags["medmlops.model_id"] == model_id and run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["drift_share"] == pytest.approx(kept["drift_share"]) and metrics["drift_detected"] == 1.0
    assert metrics["records"] == 40
    for name in CLASSES:
        key = "".join(c if c.isalnum() or c in "_-. /" else "_" for c in f"flag_rate/{name}")
        assert metrics[key] == pytest.approx(kept["flag_rate"][name])
    assert any(key.startswith("quality/") and key.endswith("/roc_auc") for key in metrics)
    # Every metric at the window's end as its step, so one version's windows line up over time.
    history = client.get_metric_history(run.info.run_id, "drift_share")
    assert [m.step for m in history] == [int(kept["created_at"])]
    # Linked to the version's logged model: the model's page lists the window's metrics.
    linked = {m.key: m.value for m in client.get_logged_model(model_id).metrics or []}
    assert linked["drift_share"] == pytest.approx(kept["drift_share"])
    artifacts = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "drift")}
    assert artifacts == {Path(kept["html_path"]).name, Path(kept["summary_path"]).name}
    tags = client.get_model_version(FAMILY, version).tags
    assert tags["production_last_run"] == run.info.run_id
    assert tags["production_drift_share"] == f"{kept['drift_share']:.4f}"

    # A second window: a second run, the version's tags follow the newest.
    assert report_command(args, registry=tracking) == 0
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    assert (
        len(runs) == 2 and client.get_model_version(FAMILY, version).tags["production_last_run"] == runs[0].info.run_id
    )


def test_production_window_metrics_carry_estimated_and_realized_performance(tracking, caplog):
    from medmlops.registry.tracking import log_production_window

    summary = {
        "family": FAMILY, "version": "7", "drift_share": 0.25, "detected": False, "n_drifted": 5, "n_columns": 20,
        "n_current": 120, "flag_rate": {"gcs>=13": 0.1}, "flag_alerts": [], "quality": {},
        "performance": [{
            "family": FAMILY, "version": "7", "estimable": True, "n": 120, "n_labelled": 30,
            "classes": {"Atelectasis": {"estimated": {"auroc": 0.81, "f1": 0.5}, "realized": {"auroc": 0.79, "f1": None}}},
            "gate": {"metric": "macro_auroc", "estimated": 0.8, "realized": 0.78, "floor": 0.75, "below_floor": False},
        }],
    }  # fmt: skip
    run_id = log_production_window(tracking, FAMILY, "7", summary, window_end=1_790_000_000.0)
    assert "not in the registry" in caplog.text  # logged all the same, without the link
    run = MlflowClient().get_run(run_id)
    assert run.data.metrics == {
        "drift_share": 0.25, "drift_detected": 0.0, "drifted_columns": 5.0, "compared_columns": 20.0, "records": 120.0,
        "flag_alerts": 0.0, "flag_rate/gcs__13": 0.1, "labelled_records": 30.0,
        "estimated/Atelectasis/auroc": 0.81, "estimated/Atelectasis/f1": 0.5, "realized/Atelectasis/auroc": 0.79,
        "estimated/gate/macro_auroc": 0.8, "realized/gate/macro_auroc": 0.78, "gate_floor": 0.75, "below_floor": 0.0,
    }  # fmt: skip
    assert "medmlops.model_id" not in run.data.tags


def test_the_monitoring_service_serves_the_files_a_report_loads_and_nothing_else(reference, tmp_path):
    from medmlops.monitoring.service import Monitor, NotFound
    from medmlops.monitoring.store import Store

    summary = drift_report(reference, features(30, seed=5), family=FAMILY, out_dir=tmp_path / "reports")
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        store.add_drift_report(FAMILY, summary.to_dict())
        report_id = store.latest_drift(FAMILY)["id"]
        monitor = Monitor.__new__(Monitor)  # only the store is needed for these two reads
        monitor.store = store
        for name, source in lib_files().items():
            assert monitor.drift_asset(report_id, name).read_bytes() == source.read_bytes()
        for bad in ("../m.db", "index.js", "x.js", f"../reports/{summary.html_path.name}"):
            with pytest.raises(NotFound):
                monitor.drift_asset(report_id, bad)
        (tmp_path / "reports" / LIB_DIR / "material-ui-icons.woff2").unlink()
        with pytest.raises(NotFound, match="has no material-ui-icons.woff2"):
            monitor.drift_asset(report_id, "material-ui-icons.woff2")
    finally:
        store.close()


def test_the_small_report_draws_as_evidentlys_own_through_the_monitoring_service(reference, tmp_path):
    """The report page served at /v1/drift/{id}/report.html (a real monitoring service) loads its bundle from the
    service, draws the same text as Evidently's own ``save_html`` of the same snapshot, and a row's details panel
    draws its plot from the one copy of the graph the page keeps."""
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} not found: run `make browser` (Debian's chromium package)"
    from evidently.core.report import Snapshot
    from playwright.sync_api import sync_playwright

    from medmlops.monitoring.store import Store

    from .records import start_monitor

    summary = drift_report(reference, features(50, seed=6, shift=1.0, labels=True), family=FAMILY,
                           out_dir=tmp_path / "reports")  # fmt: skip
    own = tmp_path / "evidently" / "report.html"
    own.parent.mkdir()
    Snapshot.loads(summary.json_path.read_text()).save_html(str(own))
    sizes = (summary.html_path.stat().st_size, own.stat().st_size)
    assert sizes[1] > 4_000_000 and sizes[0] < sizes[1] / 5, sizes
    server = start_monitor(tmp_path)
    try:
        store = Store(server.db_url)
        try:
            store.add_drift_report(FAMILY, summary.to_dict())
            report_id = store.latest_drift(FAMILY)["id"]
        finally:
            store.close()
        seen: dict[str, dict] = {}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                for name, url in (("served", f"{server.url}/v1/drift/{report_id}/report.html"),
                                  ("own", own.as_uri())):  # fmt: skip
                    page = browser.new_page(viewport={"width": 1280, "height": 1000})
                    problems: list[str] = []
                    page.on("pageerror", lambda e, p=problems: p.append(f"page error: {e}"))
                    page.on("requestfailed", lambda r, p=problems: p.append(f"request failed: {r.url}"))
                    page.on("response", lambda r, p=problems: p.append(f"HTTP {r.status}: {r.url}") if r.status >= 400
                            else None)  # fmt: skip
                    loaded: list[str] = []
                    page.on("requestfinished", lambda r, seen=loaded: seen.append(r.url))
                    page.goto(url, wait_until="networkidle")
                    text = page.inner_text("body")
                    plots = page.locator(".js-plotly-plot").count()
                    page.locator("tbody tr button[aria-label='Detail panel visibility toggle']").first.click()
                    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length > {plots}",
                                           timeout=20_000)  # fmt: skip
                    seen[name] = {"text": text, "problems": problems, "loaded": loaded}
                    page.close()
            finally:
                browser.close()
        font_url = f"{server.url}/v1/drift/{report_id}/{LIB_DIR}/material-ui-icons.woff2"
        with urllib.request.urlopen(font_url, timeout=10) as response:
            fonts = [(response.status, response.read())]
    finally:
        server.stop()
    assert seen["served"]["problems"] == [] and seen["own"]["problems"] == []
    assert seen["served"]["text"] == seen["own"]["text"] and "Data drift: cxr-findings" in seen["served"]["text"]
    js = next(name for name in lib_files() if name.endswith(".js"))
    assert f"{server.url}/v1/drift/{report_id}/{LIB_DIR}/{js}" in seen["served"]["loaded"], seen["served"]["loaded"]
    # The icon font is the page's @font-face fallback, fetched only when an icon needs it: served all the same.
    assert fonts == [(200, lib_files()["material-ui-icons.woff2"].read_bytes())]


def test_the_command_line_hands_the_registry_to_the_report(monkeypatch, tracking):
    """``medmlops monitor report`` gives the report params.yaml's registry section: the window goes to MLflow."""
    import medmlops.monitoring.drift
    from medmlops.cli import build_parser
    from medmlops.config import load_params

    from ..conftest import REPO

    seen = {}
    monkeypatch.setattr(medmlops.monitoring.drift, "report_command", lambda args: seen.setdefault("args", args) and 0)
    args = build_parser().parse_args(["monitor", "report", "--family", FAMILY, "--workspace", "/ws"])
    assert args.func(args) == 0
    assert seen["args"].registry == load_params(REPO / "params.yaml").registry
