"""``python -m monitoring`` (what ``medmlops monitor serve`` runs): its defaults are the ones the manifests rely on."""

from __future__ import annotations

from monitoring.__main__ import build_parser


def test_serve_defaults_match_the_kubernetes_manifests():
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.batch_size) == ("127.0.0.1", 8080, 8)
    # Serving's 64 MiB upload limit, base64-encoded in a JSON record, must fit the monitoring body limit.
    assert args.max_body_bytes >= 64 * 1024 * 1024 * 4 / 3 + 64 * 1024
    assert args.db_url is None and args.token is None and args.read_token is None and args.flag_window == "500"
    assert args.func.__name__ == "cmd_serve"
    # The in-process worker stays the default (the demo, one machine); the cluster runs `serve --no-worker` beside
    # `medmlops monitor worker` pods, which take the same worker options.
    assert args.no_worker is False and (args.lease_s, args.max_attempts, args.backlog_bound) == (60.0, 5, 1000)
    assert build_parser().parse_args(["--no-worker"]).no_worker is True
