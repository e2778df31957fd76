"""``medmlops.monitoring.estimate`` on constructed backlogs (no server): the stratified estimate of the saliency-tier
flag rate stays on the truth while the workers run behind in priority order, where the plain share of the analysed
records is far off; it is exact once everything is analysed; unknown rather than guessed with nothing to go on.
One backlog also goes through the store: claims in priority order, then the window read back and estimated."""

from __future__ import annotations

import random
import statistics

import pytest

from medmlops.monitoring.estimate import coverage, estimate_share, logit_rates, saliency_flagged_share, saliency_rates
from medmlops.monitoring.store import FLAGGED, REST, SAMPLE, Intake, Store

from .records import prediction_record


def backlog(seed: int, *, n: int = 2000, capacity: int = 700, sample_p: float = 0.2) -> list[dict]:
    """``n`` records: 15 % flagged by the logit tier (INFORMER agrees 70 % of the time); of the others INFORMER
    flags 5 % in the older half and 25 % in the newer (a shift). Workers analyse ``capacity`` of them in the claim
    order under a backlog: flagged, sample, rest, each oldest first."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        logit_flag = rng.random() < 0.15
        truth = rng.random() < (0.7 if logit_flag else 0.25 if i >= n // 2 else 0.05)
        stratum = FLAGGED if logit_flag else SAMPLE if rng.random() < sample_p else REST
        rows.append({
            "family": "cxr-findings", "version": "3", "received_at": float(i), "status": "pending",
            "stratum": stratum, "sample_p": None if logit_flag else sample_p, "truth": truth,
            "logit_flags": {"c": logit_flag}, "logit_at": float(i), "flagged": None, "flags": None,
        })  # fmt: skip
    for row in sorted(rows, key=lambda r: (r["stratum"], r["received_at"]))[:capacity]:
        row.update(status="done", flagged=row["truth"], flags={"c": row["truth"]})
    return rows


def _truth(rows: list[dict]) -> float:
    return statistics.fmean(r["truth"] for r in rows)


def _naive(rows: list[dict]) -> float:
    return statistics.fmean(r["truth"] for r in rows if r["flagged"] is not None)


def test_the_estimate_is_on_the_truth_where_the_share_of_analysed_records_is_not():
    rows = backlog(seed=1)
    truth, naive, estimate = _truth(rows), _naive(rows), saliency_rates(rows)["c"]
    assert naive - truth > 0.1  # flagged records first: the analysed ones over-represent INFORMER's flags
    assert estimate == pytest.approx(truth, abs=0.05)
    assert saliency_flagged_share(rows) == pytest.approx(estimate)
    assert logit_rates(rows)["c"] == pytest.approx(statistics.fmean(r["stratum"] == FLAGGED for r in rows))
    cover = coverage(rows)
    assert cover["records"] == 2000 and cover["analysed"] == 700 and not cover["complete"]
    assert cover["by_stratum"]["flagged"]["analysed"] == cover["by_stratum"]["flagged"]["records"]


def test_the_estimate_is_unbiased_over_repeated_backlogs():
    errors = []
    for seed in range(120):
        rows = backlog(seed, n=600, capacity=220)
        errors.append(saliency_rates(rows)["c"] - _truth(rows))
    assert abs(statistics.fmean(errors)) < 0.01  # the mean error over 120 designs: no bias
    assert statistics.pstdev(errors) < 0.05


def test_a_rest_stratum_analysed_oldest_first_does_not_bias_a_shifting_rate():
    """Half the rest analysed (the older half, where the rate is low): those are counted as themselves, the newer
    unflagged records are estimated from the sample, not from the old rest."""
    rows = backlog(seed=5, capacity=1500)
    rest = [r for r in rows if r["stratum"] == REST]
    assert 0 < sum(r["flagged"] is not None for r in rest) < len(rest)
    assert saliency_rates(rows)["c"] == pytest.approx(_truth(rows), abs=0.04)


def test_everything_analysed_gives_the_exact_share_and_nothing_analysed_gives_none():
    rows = backlog(seed=2, capacity=10**6)
    assert saliency_rates(rows)["c"] == pytest.approx(_truth(rows), abs=1e-12)
    assert coverage(rows)["complete"]
    nothing = backlog(seed=2, capacity=0)
    assert saliency_rates(nothing) == {} and saliency_flagged_share(nothing) is None
    assert estimate_share([], lambda r: 1.0) is None


def test_failed_records_are_outside_the_population_and_classes_belong_to_their_versions():
    rows = [
        {"family": "f", "version": "1", "received_at": 1.0, "status": "done", "stratum": SAMPLE, "sample_p": 1.0,
         "flagged": True, "flags": {"a": True}, "logit_flags": None},
        {"family": "f", "version": "1", "received_at": 2.0, "status": "failed", "stratum": SAMPLE, "sample_p": 1.0,
         "flagged": None, "flags": None, "logit_flags": None},
        {"family": "f", "version": "2", "received_at": 3.0, "status": "done", "stratum": SAMPLE, "sample_p": 1.0,
         "flagged": False, "flags": {"a": False, "b": False}, "logit_flags": None},
    ]  # fmt: skip
    assert saliency_rates(rows) == {"a": 0.5, "b": 0.0}  # b: version 2 only; the failed record counts nowhere


def test_a_backlog_in_the_store_is_claimed_in_priority_and_estimated_from_the_window(tmp_path):
    rng = random.Random(11)
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    truth: dict[str, bool] = {}
    try:
        for i in range(60):
            logit_flag = rng.random() < 0.2
            stratum = FLAGGED if logit_flag else SAMPLE if rng.random() < 0.3 else REST
            intake = Intake(stratum=stratum, sample_p=None if logit_flag else 0.3, logit_flags={"findings/A": logit_flag},
                            logit={"score": "msr"}, logit_at=float(i))  # fmt: skip
            store.add_record(prediction_record(f"r{i:02d}"), received_at=1_000.0 + i, intake=intake)
            truth[f"r{i:02d}"] = rng.random() < (0.8 if logit_flag else 0.1)
        analysed: list[str] = []
        while len(analysed) < 25 and (batch := store.claim("w", 5, lease_s=60, backlog_bound=10)):
            results = {r.request_id: {"flags": {"findings/A": truth[r.request_id]}} for r in batch}
            assert store.finish("w", results) == len(batch)
            analysed += results
        rows = store.population()
        strata = {r["request_id"]: r["stratum"] for r in rows}
        assert [strata[r] for r in analysed] == sorted(strata[r] for r in analysed)  # flagged, sample, rest
        assert [r["request_id"] for r in rows] == sorted(truth)  # the window, oldest first
        assert sum(r["flagged"] is not None for r in rows) == 25
        assert saliency_rates(rows) == {"findings/A": pytest.approx(estimate_share(rows, _flag_a))}
        assert logit_rates(rows)["findings/A"] == statistics.fmean(r["stratum"] == FLAGGED for r in rows)
    finally:
        store.close()


def _flag_a(row: dict) -> float | None:
    return None if row["flags"] is None else float(row["flags"]["findings/A"])
