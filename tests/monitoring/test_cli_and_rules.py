"""``medmlops monitor report`` arguments, and the service's rules without a server: who may read and write,
where it may listen, the flag-rate window."""

from __future__ import annotations

import pytest

from medmlops.cli import build_parser
from medmlops.errors import UserError
from medmlops.monitoring.metrics import FlagWindow, flag_rates, parse_flag_window
from medmlops.monitoring.service import Monitor, Settings, bearer, check_exposure, is_loopback, load_factory


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
    rates = flag_rates([{"A": True, "B": False}, {"A": False, "B": False}, {"A": True}, None])
    assert rates == {"A": pytest.approx(2 / 3), "B": 0.0}


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
