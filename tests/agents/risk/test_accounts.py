"""The drawdown breaker per account: execution trades several accounts (exchanges) and
says which one each check and snapshot is about; each has its own equity peak."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from tests.agents.risk.conftest import Risk, detail


def _account() -> str:
    return f"acct{uuid.uuid4().hex[:8]}"


def _on(account: str, equity: str) -> dict[str, Any]:
    return {"equity": equity, "cash": equity, "account": account}


def _line(risk: Risk, account: str) -> dict[str, Any]:
    [line] = [a for a in risk.ok(risk.get("/drawdown"))["accounts"] if a["account"] == account]
    return line


def test_a_small_second_account_is_not_a_drawdown_of_the_first(risk: Risk) -> None:
    """Each account is measured against its own peak: a 2,000 account beside the 100,000
    book is at its peak, not 98 % below someone else's."""
    small = _account()
    decision = risk.check(risk.order(amount="0.00104", portfolio=_on(small, "2000")))
    assert decision["approved"] is True, [c for c in decision["checks"] if not c["passed"]]
    assert "drawdown of equity 2000.00 from peak 2000.00: 0.0000 <=" in detail(
        decision, "max_drawdown_pct"
    )
    assert risk.state()["state"] == "ACTIVE"
    line = _line(risk, small)
    assert Decimal(line["peak_equity"]) == Decimal(line["equity"]) == 2000
    assert Decimal(line["current_drawdown_pct"]) == 0


def test_an_accounts_own_drawdown_halts_and_names_it(risk: Risk) -> None:
    account = _account()
    risk.check(risk.order(amount="0.00101", portfolio=_on(account, "5000")))
    try:
        decision = risk.check(risk.order(amount="0.00102", portfolio=_on(account, "3500")))
        assert decision["approved"] is False and decision["state"] == "HALTED"
        reason = risk.state()["reason"]
        assert f"account {account}:" in reason, reason
        assert "equity 3500.00 is 0.3000 below peak 5000.00" in reason, reason
    finally:
        risk.resume()
    # The operator accepts the loss: the account's peak is re-based, trading goes on.
    reset = {"reason": "loss accepted", "account": account}
    after = risk.ok(risk.post("/drawdown/reset", reset))
    line = next(a for a in after["accounts"] if a["account"] == account)
    assert Decimal(line["peak_equity"]) == 3500
    decision = risk.check(risk.order(amount="0.00103", portfolio=_on(account, "3400")))
    assert decision["approved"] is True, [c for c in decision["checks"] if not c["passed"]]


def test_snapshots_feed_their_accounts_peak(risk: Risk) -> None:
    account = _account()
    body = {**_on(account, "8000"), "positions": []}
    out = risk.ok(risk.post("/portfolio/snapshots", body), 201)
    assert Decimal(out["peak_equity"]) == 8000 and Decimal(out["drawdown_pct"]) == 0
    assert Decimal(_line(risk, account)["equity"]) == 8000


def test_resetting_an_account_never_seen_is_404(risk: Risk) -> None:
    response = risk.post("/drawdown/reset", {"reason": "typo", "account": "nosuchaccount"})
    assert response.status_code == 404, response.text
    assert "no equity seen for account 'nosuchaccount'" in response.json()["detail"]


def test_an_account_name_that_is_not_an_exchange_id_is_422(risk: Risk) -> None:
    """Accounts are named like exchange ids (`binance`, `sim_paper`): anything else is
    refused naming the field, on a reset and on a check's portfolio alike."""
    response = risk.post("/drawdown/reset", {"reason": "typo", "account": "Binance US"})
    assert response.status_code == 422, response.text
    assert "account" in response.text
    order = risk.order(amount="0.001", portfolio=_on("../etc", "1000"))
    response = risk.post("/checks/pre-trade", order)
    assert response.status_code == 422, response.text
    assert "account" in response.text
