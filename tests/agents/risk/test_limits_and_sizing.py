"""Limits (operator only, validated, audited) and position sizing checked by hand."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.agents.risk.conftest import BASELINE_LIMITS, Risk

pytestmark = pytest.mark.usefixtures("baseline")


# --- limits --------------------------------------------------------------------------------
def test_put_changes_only_the_limits_sent_and_is_audited(risk: Risk) -> None:
    mark = risk.audit_mark()
    before = risk.ok(risk.get("/limits"))
    after = risk.ok(risk.put("/limits", {"max_order_notional": "5000", "max_heat_pct": "0.04"}))
    assert after["max_order_notional"] == "5000" and after["max_heat_pct"] == "0.04"
    untouched = set(BASELINE_LIMITS) - {"max_order_notional", "max_heat_pct"}
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}
    assert after["updated_by"] == "operator" and after["updated_at"]
    assert risk.ok(risk.get("/limits")) == after
    [event] = risk.audited(mark, "risk.limits_changed")
    assert event["data"]["old"]["max_order_notional"] == "10000"
    assert event["data"]["new"]["max_order_notional"] == "5000"
    assert event["data"]["changed"] == ["max_heat_pct", "max_order_notional"]
    # The new limit is the one checks use.
    decision = risk.check(risk.order(amount="0.11", stop_loss="49900"))  # 5500
    assert decision["approved"] is False


def test_a_service_may_not_change_limits(risk: Risk) -> None:
    response = risk.put("/limits", {"max_order_notional": "1e9"}, token=risk.service_token)
    assert response.status_code == 403
    assert "only the operator" in response.json()["detail"]
    assert risk.ok(risk.get("/limits"))["max_order_notional"] == "10000"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_order_notional": "-1"}, "body.max_order_notional"),
        ({"max_order_notional": "NaN"}, "body.max_order_notional"),
        ({"max_position_pct": "0"}, "body.max_position_pct"),
        ({"max_heat_pct": "1.5"}, "body.max_heat_pct"),
        ({"max_drawdown_pct": "Infinity"}, "body.max_drawdown_pct"),
        ({"max_orders_per_minute": 0}, "body.max_orders_per_minute"),
        ({"duplicate_window_s": -1}, "body.duplicate_window_s"),
        ({"max_reference_age_ms": "soon"}, "body.max_reference_age_ms"),
        ({"max_order_notionl": "5"}, "body.max_order_notionl"),
    ],
)
def test_bad_limits_are_422_naming_the_field(risk: Risk, body: dict[str, Any], field: str) -> None:
    response = risk.put("/limits", body)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert risk.ok(risk.get("/limits"))["max_order_notional"] == "10000"


def test_an_empty_change_is_422(risk: Risk) -> None:
    response = risk.put("/limits", {})
    assert response.status_code == 422 and "at least one limit" in response.json()["detail"]


# --- position sizing -----------------------------------------------------------------------
def size(risk: Risk, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = risk.ok(risk.post("/position-size", body))
    return result


def test_fixed_fractional(risk: Risk) -> None:
    # Risk 1 % of 10000 = 100 over a stop 5 away: 20 units, 2000 notional.
    result = size(
        risk,
        method="fixed_fractional",
        equity="10000",
        entry_price="100",
        stop_price="95",
        risk_fraction="0.01",
    )
    assert Decimal(result["amount"]) == 20 and Decimal(result["notional"]) == 2000
    assert Decimal(result["risk_amount"]) == 100 and Decimal(result["stop_distance"]) == 5
    assert Decimal(result["fraction_of_equity"]) == Decimal("0.2") and result["capped_by"] is None


def test_fixed_fractional_is_capped_by_max_position_pct(risk: Risk) -> None:
    # 2 % over 5 would be 40 units (4000); max_position_pct 0.25 of 10000 at 100 is 25.
    result = size(
        risk,
        method="fixed_fractional",
        equity="10000",
        entry_price="100",
        stop_price="105",
        risk_fraction="0.02",
    )
    assert Decimal(result["amount"]) == 25 and result["capped_by"] == "max_position_pct"
    assert Decimal(result["risk_amount"]) == 125


def test_fixed_fractional_rounds_down_to_the_amount_step(risk: Risk) -> None:
    # 0.5 % of 10000 = 50 over a stop 3 away: 16.67 units, 16.5 in steps of 0.5.
    result = size(
        risk,
        method="fixed_fractional",
        equity="10000",
        entry_price="100",
        stop_price="97",
        risk_fraction="0.005",
        amount_step="0.5",
    )
    assert Decimal(result["amount"]) == Decimal("16.5")


def test_kelly(risk: Risk) -> None:
    # W 0.6, R 2: edge 0.6 - 0.4 / 2 = 0.4; half Kelly 0.2 of 10000 = 2000 at 100 = 20 units.
    result = size(
        risk, method="kelly", equity="10000", entry_price="100", win_rate="0.6", payoff_ratio="2"
    )
    assert Decimal(result["kelly_edge"]) == Decimal("0.4") and Decimal(result["amount"]) == 20
    assert result["inputs"]["kelly_fraction"] == "0.5"
    quarter = size(
        risk,
        method="kelly",
        equity="10000",
        entry_price="100",
        win_rate="0.6",
        payoff_ratio="2",
        kelly_fraction="0.25",
    )
    assert Decimal(quarter["amount"]) == 10


def test_kelly_without_an_edge_is_zero(risk: Risk) -> None:
    # W 0.3, R 1: edge 0.3 - 0.7 = -0.4: do not trade.
    result = size(
        risk, method="kelly", equity="10000", entry_price="100", win_rate="0.3", payoff_ratio="1"
    )
    assert Decimal(result["amount"]) == 0 and Decimal(result["kelly_edge"]) == Decimal("-0.4")


def test_atr(risk: Risk) -> None:
    # Risk 1 % of 10000 = 100 over 2 x ATR 2.5 = 5: 20 units.
    result = size(
        risk, method="atr", equity="10000", entry_price="100", atr="2.5", risk_fraction="0.01"
    )
    assert Decimal(result["amount"]) == 20 and Decimal(result["stop_distance"]) == 5
    triple = size(
        risk,
        method="atr",
        equity="10000",
        entry_price="100",
        atr="2.5",
        atr_multiple="4",
        risk_fraction="0.01",
    )
    assert Decimal(triple["amount"]) == 10


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        ({"method": "fixed_fractional", "risk_fraction": "0.01"}, {"stop_price"}),
        ({"method": "fixed_fractional"}, {"stop_price", "risk_fraction"}),
        ({"method": "kelly", "payoff_ratio": "2"}, {"win_rate"}),
        ({"method": "atr", "risk_fraction": "0.01"}, {"atr"}),
        ({"method": "atr", "atr": "2"}, {"risk_fraction"}),
    ],
)
def test_sizing_names_the_missing_inputs(
    risk: Risk, body: dict[str, Any], missing: set[str]
) -> None:
    response = risk.post("/position-size", {"equity": "10000", "entry_price": "100", **body})
    assert response.status_code == 422
    fields = {e["field"].rsplit(".", 1)[-1] for e in response.json()["errors"]}
    assert fields == missing, response.json()


def test_sizing_refuses_a_stop_at_the_entry_and_an_unknown_method(risk: Risk) -> None:
    same = risk.post(
        "/position-size",
        {
            "method": "fixed_fractional",
            "equity": "1",
            "entry_price": "100",
            "stop_price": "100",
            "risk_fraction": "0.01",
        },
    )
    assert same.status_code == 422 and "stop_price must differ" in same.json()["detail"]
    unknown = risk.post(
        "/position-size", {"method": "martingale", "equity": "1", "entry_price": "1"}
    )
    assert unknown.status_code == 422
