"""Snapshots, exposure, drawdown (and its breaker) and VaR on series checked by hand."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.agents.risk.conftest import EQUITY, Risk

pytestmark = pytest.mark.usefixtures("baseline")

# 21 daily returns; sorted, the worst are -0.04, -0.03, -0.025, ...
RETURNS = [
    0.01, -0.02, 0.015, -0.005, 0.03, -0.04, 0.02, 0.0, -0.01, 0.025, -0.015,
    0.005, -0.03, 0.01, 0.02, -0.025, 0.015, -0.005, 0.01, -0.01, 0.005,
]  # fmt: skip


def snapshot(risk: Risk, equity: Any, taken_at: datetime | None = None, **extra: Any) -> Any:
    body: dict[str, Any] = {"equity": str(equity), "cash": str(equity), **extra}
    if taken_at is not None:
        body["taken_at"] = taken_at.isoformat()
    return risk.ok(risk.post("/portfolio/snapshots", body), 201)


def backfill(risk: Risk, start: datetime, equities: list[Decimal]) -> tuple[datetime, datetime]:
    """Daily snapshots from `start`, after a current one so that they are history only."""
    snapshot(risk, EQUITY)
    for day, equity in enumerate(equities):
        snapshot(risk, equity, start + timedelta(days=day))
    return start, start + timedelta(days=len(equities) - 1)


def test_exposure_from_the_latest_snapshot(risk: Risk) -> None:
    positions = [
        {
            "exchange": "sim",
            "symbol": "BTC/USDT",
            "amount": "0.5",
            "entry_price": "48000",
            "mark_price": "50000",
        },
        {
            "exchange": "sim",
            "symbol": "ETH/USDT",
            "amount": "-10",
            "entry_price": "3100",
            "mark_price": "3000",
        },
    ]
    stored = snapshot(risk, EQUITY, positions=positions)
    assert stored["state"] == "ACTIVE" and Decimal(stored["drawdown_pct"]) == 0
    exposure = risk.ok(risk.get("/exposure"))
    assert Decimal(exposure["gross"]) == 55000 and Decimal(exposure["net"]) == -5000
    assert Decimal(exposure["gross_pct_of_equity"]) == Decimal("0.55")
    assert Decimal(exposure["net_pct_of_equity"]) == Decimal("-0.05")
    lines = [
        (p["symbol"], Decimal(p["notional"]), Decimal(p["pct_of_equity"]))
        for p in exposure["positions"]
    ]
    assert lines == [("ETH/USDT", -30000, Decimal("-0.3")), ("BTC/USDT", 25000, Decimal("0.25"))]


def test_drawdown_statistics_from_snapshots(risk: Risk) -> None:
    # 100, 120, 90, 95, 130, 125: worst fall 120 -> 90 = 25 %, from day 1, regained on day 4.
    since, until = backfill(
        risk, datetime(2002, 3, 1, tzinfo=UTC), [Decimal(v) for v in (100, 120, 90, 95, 130, 125)]
    )
    body = risk.ok(
        risk.get("/drawdown", params={"since": since.isoformat(), "until": until.isoformat()})
    )
    assert body["snapshots"] == 6
    assert body["max_drawdown_pct"] == pytest.approx(0.25)
    assert body["max_drawdown_peak_at"].startswith("2002-03-02")
    assert body["max_drawdown_trough_at"].startswith("2002-03-03")
    assert body["max_drawdown_duration_s"] == 3 * 86400 and body["recovered"] is True
    # History does not move the breaker: the peak is still the baseline's.
    assert Decimal(body["peak_equity"]) == EQUITY and risk.state()["state"] == "ACTIVE"


@pytest.mark.parametrize("taken_at", ["2002-03-01T00:00:00", "2999-01-01T00:00:00+00:00"])
def test_snapshot_times_need_a_zone_and_no_future(risk: Risk, taken_at: str) -> None:
    body = {"equity": "1000", "cash": "1000", "taken_at": taken_at}
    response = risk.post("/portfolio/snapshots", body)
    assert response.status_code == 422 and "taken_at" in response.json()["detail"]


def test_an_unrecovered_drawdown_lasts_until_the_last_snapshot(risk: Risk) -> None:
    since, until = backfill(
        risk, datetime(2003, 1, 1, tzinfo=UTC), [Decimal(v) for v in (200, 150, 180, 190)]
    )
    body = risk.ok(
        risk.get("/drawdown", params={"since": since.isoformat(), "until": until.isoformat()})
    )
    assert body["max_drawdown_pct"] == pytest.approx(0.25)
    assert body["max_drawdown_duration_s"] == 3 * 86400 and body["recovered"] is False


def test_a_snapshot_past_the_drawdown_limit_halts_trading(risk: Risk) -> None:
    try:
        stored, event = risk.broadcast_during(lambda: snapshot(risk, "70000"))
        assert stored["state"] == "HALTED" and Decimal(stored["drawdown_pct"]) == Decimal("0.3")
        assert event["state"] == "HALTED" and event["changed_by"] == "risk"  # sent after the answer
        state = risk.state()
        assert state["state"] == "HALTED" and state["changed_by"] == "risk"
        assert (
            "equity 70000.00 is 0.3000 below peak 100000.00 > max_drawdown_pct 0.2"
            in state["reason"]
        )
        drawdown = risk.ok(risk.get("/drawdown"))
        assert Decimal(drawdown["current_drawdown_pct"]) == Decimal("0.3")
        assert Decimal(drawdown["equity"]) == 70000
    finally:
        risk.resume()


def test_only_the_operator_resets_the_peak(risk: Risk) -> None:
    refused = risk.post("/drawdown/reset", {"reason": "x", "equity": "1"}, token=risk.service_token)
    assert refused.status_code == 403
    mark = risk.audit_mark()
    body = risk.ok(
        risk.post("/drawdown/reset", {"reason": "withdrawal of 20000", "equity": "80000"})
    )
    assert Decimal(body["peak_equity"]) == 80000
    [event] = risk.audited(mark, "risk.peak_reset")
    assert (
        event["data"]["old_peak"].startswith("100000")
        and event["data"]["reason"] == "withdrawal of 20000"
    )


# --- value at risk -------------------------------------------------------------------------
def var_series(risk: Risk, year: int) -> dict[str, str]:
    equities, equity = [Decimal(1000)], Decimal(1000)
    for r in RETURNS:
        equity = (equity * (1 + Decimal(repr(r)))).quantize(Decimal("1e-12"))
        equities.append(equity)
    since, until = backfill(risk, datetime(year, 1, 1, tzinfo=UTC), equities)
    return {"since": since.isoformat(), "until": until.isoformat()}


def var(risk: Risk, window: dict[str, str], **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = risk.ok(risk.get("/var", params={**window, **params}))
    return body


def test_historical_var_by_hand(risk: Risk) -> None:
    window = var_series(risk, 2001)
    # 21 returns, 5 % quantile at position 0.05 x 20 = 1: the second worst, -0.03.
    # CVaR: the mean of the returns at or below it, (-0.04 - 0.03) / 2.
    body = var(risk, window, method="historical", confidence=0.95)
    assert body["returns"] == 21 and body["interval_days"] == pytest.approx(1.0)
    assert body["var_pct"] == pytest.approx(0.03, abs=1e-9)
    assert body["cvar_pct"] == pytest.approx(0.035, abs=1e-9)
    last_equity = Decimal(body["equity"])
    assert Decimal(body["var_amount"]) == (last_equity * Decimal("0.03")).quantize(Decimal("0.01"))
    # Four days: square root of time, twice the one-day numbers.
    four = var(risk, window, method="historical", confidence=0.95, horizon_days=4)
    assert four["var_pct"] == pytest.approx(0.06, abs=1e-9)


def test_parametric_and_montecarlo_var(risk: Risk) -> None:
    window = var_series(risk, 2004)
    mu, sigma = statistics.mean(RETURNS), statistics.stdev(RETURNS)
    z = statistics.NormalDist().inv_cdf(0.95)
    expected_var = z * sigma - mu
    expected_cvar = sigma * statistics.NormalDist().pdf(z) / 0.05 - mu
    body = var(risk, window, method="parametric")
    assert body["var_pct"] == pytest.approx(expected_var, rel=1e-6)
    assert body["cvar_pct"] == pytest.approx(expected_cvar, rel=1e-6)
    # Monte Carlo of the same normal, one step a day: close to the closed form.
    mc = var(risk, window, method="montecarlo", simulations=100_000, seed=7)
    assert mc["var_pct"] == pytest.approx(expected_var, rel=0.03)
    assert mc["cvar_pct"] == pytest.approx(expected_cvar, rel=0.03)
    assert var(risk, window, method="montecarlo", simulations=100_000, seed=7) == mc


def test_var_with_too_few_snapshots_is_409(risk: Risk) -> None:
    start = datetime(2005, 1, 1, tzinfo=UTC)
    since, until = backfill(risk, start, [Decimal(1000), Decimal(990), Decimal(1010)])
    response = risk.get("/var", params={"since": since.isoformat(), "until": until.isoformat()})
    assert response.status_code == 409
    assert (
        "at least 10 returns" in response.json()["detail"]
        and "found 2" in response.json()["detail"]
    )


@pytest.mark.parametrize(
    "params",
    [{"confidence": 1.5}, {"confidence": 0.2}, {"method": "guess"}, {"horizon_days": 0}],
)
def test_var_parameters_are_validated(risk: Risk, params: dict[str, Any]) -> None:
    assert risk.get("/var", params=params).status_code == 422
