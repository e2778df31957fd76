"""``medmlops monitor report|worker`` arguments, and the service's rules without a server: who may read and write,
where it may listen, the flag-rate window, the query parameters a hostile client sends."""

from __future__ import annotations

import pytest

from medmlops.cli import build_parser
from medmlops.errors import UserError
from medmlops.inference.record import RecordError
from medmlops.monitoring.estimate import logit_rates
from medmlops.monitoring.metrics import FlagWindow, parse_flag_window
from medmlops.monitoring.service import (
    MAX_JSON_DEPTH,
    Monitor,
    Settings,
    bearer,
    check_exposure,
    check_name,
    is_loopback,
    load_factory,
    load_json,
    parse_count,
    parse_time,
)


def test_report_arguments_reach_the_drift_report_command(monkeypatch):
    import medmlops.monitoring.drift

    seen = {}
    monkeypatch.setattr(
        medmlops.monitoring.drift, "report_command", lambda args: seen.setdefault("args", args) and 0, raising=False
    )
    argv = ["monitor", "report", "--family", "cxr-findings", "--workspace", "/ws", "--since-hours", "24", "--last",
            "200", "--version", "3", "--out", "reports/drift", "--db-url", "sqlite:///m.db"]  # fmt: skip
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    got = seen["args"]
    assert (got.family, got.workspace, got.since_hours, got.last, got.version, got.out, got.db_url) == (
        "cxr-findings", "/ws", 24.0, 200, "3", "reports/drift", "sqlite:///m.db"
    )  # fmt: skip
    with pytest.raises(SystemExit):
        build_parser().parse_args(["monitor", "report", "--workspace", "/ws"])  # --family is required


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("monitoring.example", False)],
)  # fmt: skip
def test_only_loopback_may_go_without_a_write_token(host, loopback):
    assert is_loopback(host) is loopback
    if loopback:
        check_exposure(host, None)
    else:
        with pytest.raises(UserError, match=f"refusing to listen on {host} without a write token"):
            check_exposure(host, None)
    check_exposure(host, "secret")


def test_bearer_tokens_and_access_rules(tmp_path):
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer("Bearer ") is None and bearer(None) is None
    url = f"sqlite:///{tmp_path / 'm.db'}"
    closed = Monitor(Settings(db_url=url, token="w", read_token="r"))
    open_ = Monitor(Settings(db_url=url))
    writes_only = Monitor(Settings(db_url=url, token="w"))
    try:
        rules = {
            (closed, "write", "Bearer w"): True, (closed, "write", "Bearer r"): False, (closed, "write", None): False,
            (closed, "read", "Bearer r"): True, (closed, "read", "Bearer w"): True, (closed, "read", "Bearer x"): False,
            (closed, "read", None): False, (closed, "open", None): True,
            (open_, "write", None): True, (open_, "read", None): True,
            (writes_only, "write", "Bearer wrong"): False, (writes_only, "read", None): True,
        }  # fmt: skip
        for (monitor, scope, header), allowed in rules.items():
            assert monitor.allowed(scope, header) is allowed, (monitor.settings, scope, header)
    finally:
        for monitor in (closed, open_, writes_only):
            monitor.close()


def test_flag_window_and_rates():
    assert parse_flag_window("500") == FlagWindow(last=500, hours=None)
    assert parse_flag_window("24h") == FlagWindow(last=None, hours=24.0)
    assert parse_flag_window("1.5h").hours == 1.5
    for bad in ("0", "-5", "abc", "2.5", "h"):
        with pytest.raises(UserError, match="--flag-window"):
            parse_flag_window(bad)
    rows = [{"logit_flags": flags} for flags in ({"A": True, "B": False}, {"A": False, "B": False}, {"A": True}, None)]
    assert logit_rates(rows) == {"A": pytest.approx(2 / 3), "B": 0.0}


def test_an_analyser_factory_is_imported_by_path_or_refused_in_one_sentence():
    from .fake_analyser import factory

    assert load_factory("tests.monitoring.fake_analyser:factory") is factory
    for spec in (
        "no-colon",
        "tests.monitoring.fake_analyser:nothing",
        "no.such.module:f",
        "tests.monitoring.fake_analyser:CLASSES",
    ):
        with pytest.raises(UserError, match="--analyser-factory"):
            load_factory(spec)


def test_worker_arguments_reach_the_worker_pool(monkeypatch):
    import medmlops.monitoring.pool

    seen = {}
    monkeypatch.setattr(medmlops.monitoring.pool, "run_pool", lambda options, n: seen.update(options=options, n=n) or 0)
    monkeypatch.setenv("MEDMLOPS_WORKER_HEARTBEAT", "/tmp/beat")
    argv = ["monitor", "worker", "--workers", "3", "--db-url", "sqlite:///m.db", "--batch-size", "4", "--lease-s",
            "30", "--max-attempts", "2", "--backlog-bound", "50", "--device", "cuda", "--analyser-factory",
            "tests.monitoring.fake_analyser:factory"]  # fmt: skip
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    options = seen["options"]
    assert seen["n"] == 3 and options.db_url == "sqlite:///m.db" and options.heartbeat == "/tmp/beat"
    assert (options.batch_size, options.lease_s, options.max_attempts, options.backlog_bound) == (4, 30.0, 2, 50)
    assert options.device == "cuda" and options.tracking_uri is None  # a factory given: MLflow is not configured
    defaults = build_parser().parse_args(["monitor", "worker"])
    assert (defaults.workers, defaults.batch_size, defaults.lease_s, defaults.max_attempts) == (1, 8, 60.0, 5)
    with pytest.raises(SystemExit) as refused:  # a usage error: one sentence (tests/test_cli_errors.py), exit 1
        build_parser().parse_args(["monitor", "worker", "--workers", "0"])
    assert refused.value.code == 1


@pytest.mark.parametrize("text", ["inf", "nan", "1e400", "-1", "2.5", "0x10", "", "٣"])
def test_a_count_is_a_whole_number_or_refused_naming_the_parameter(text):
    if text == "":
        assert parse_count(text, "limit", 20) == 20
        return
    with pytest.raises(UserError, match="query parameter 'limit' must be a whole number from 1 to 500"):
        parse_count(text, "limit", 20)


def test_counts_are_clamped_and_times_must_have_a_calendar_date():
    assert parse_count("7", "limit", 20) == 7 and parse_count("0", "limit", 20) == 1
    assert parse_count("9" * 400, "limit", 20) == 500
    assert parse_time("1790000000", "since") == 1_790_000_000.0
    assert parse_time("2026-01-01T00:00:00", "since") == pytest.approx(1_767_225_600.0)
    for text in ("-1e300", "1e300", "inf", "nan", "noon", "9" * 400):
        with pytest.raises(UserError, match="query parameter 'since' must be Unix seconds or an ISO 8601 time"):
            parse_time(text, "since")


def test_names_with_control_characters_are_refused():
    assert check_name("cxr-findings", "family") == "cxr-findings" and check_name(None, "family") is None
    for text in ("cxr\x00findings", "a\nb", "\x7f"):
        with pytest.raises(UserError, match="query parameter 'family' must not hold control characters"):
            check_name(text, "family")


def test_a_body_nested_too_deeply_is_a_400_naming_the_problem_not_a_recursion_error():
    assert load_json(b'{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    for body in (b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                 b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)):  # fmt: skip
        with pytest.raises(RecordError) as caught:
            load_json(body)
        assert (caught.value.status, caught.value.error, caught.value.field) == (400, "bad_json", "body")
        assert f"nests more than {MAX_JSON_DEPTH} levels" in caught.value.detail
    load_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)  # the limit itself is fine
    with pytest.raises(RecordError, match="not valid JSON"):
        load_json(b"{nope")
