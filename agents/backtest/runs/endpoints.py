"""The backtest routes: validate, call the service, return a schema.

`/backtest/list` is declared before `/backtest/{backtest_id}`, so it is not read as an id.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Path, Query, Request, Response

from agents.backtest.runs import service
from agents.backtest.runs.runner import Runner
from agents.backtest.runs.schemas import RunAccepted, RunList, RunRequest, RunView, TradePage
from agents.backtest.schemas import SYMBOL_INPUT, JobStatus, normal_symbol
from common.auth import CallerDep
from common.db import SessionDep
from common.errors import Problem
from common.service import AgentsDep

router = APIRouter(prefix="/backtest", tags=["backtests"])
RunId = Annotated[str, Path(max_length=32)]
UNPROCESSABLE: dict[int | str, dict[str, Any]] = {
    422: {"model": Problem, "description": "the request names what to fix"}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no such run"}}
NOT_DONE: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    409: {"model": Problem, "description": "the run is not done"},
}


def get_runner(request: Request) -> Runner:
    runner: Runner = request.app.state.runner
    return runner


@router.post("/run", status_code=202, responses=UNPROCESSABLE)
async def run(
    body: RunRequest,
    session: SessionDep,
    agents: AgentsDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    background: BackgroundTasks,
) -> RunAccepted:
    """Queue a backtest over stored candles; follow it at /backtest/{id}."""
    created = await service.create_run(session, agents, body, caller.name)
    # Started once the response is out: the row is committed by then.
    background.add_task(get_runner(request).start, created.id)
    response.headers["Location"] = f"/backtest/{created.id}"
    return RunAccepted(id=created.id, status="queued")


@router.get("/list")
def list_runs(
    session: SessionDep,
    symbol: Annotated[str | None, Query(pattern=SYMBOL_INPUT)] = None,
    strategy: Annotated[str | None, Query(max_length=64)] = None,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> RunList:
    """Backtests, newest first; filter by symbol, strategy, status."""
    filters = {
        "symbol": None if symbol is None else normal_symbol(symbol),
        "strategy": strategy,
        "status": status,
    }
    return service.list_runs(session, filters, limit, offset)


@router.get("/{backtest_id}", responses=NOT_FOUND)
def get_run(backtest_id: RunId, session: SessionDep) -> RunView:
    """One backtest: status, stage, progress; once done its stats (with the buy-and-hold
    benchmark and the fill convention)."""
    return service.view(service.get_run(session, backtest_id))


@router.get("/{backtest_id}/trades", responses=NOT_DONE)
def trades(
    backtest_id: RunId,
    session: SessionDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> TradePage:
    """A done backtest's trades in order, a page at a time."""
    return service.trade_page(session, backtest_id, offset, limit)


@router.get(
    "/{backtest_id}/equity",
    responses={
        **NOT_DONE,
        200: {
            "description": "columns ts (bar open, epoch ms), equity (at the close), drawdown"
            " (fraction below the running peak); `downsampling` says which bars were kept",
            "content": {"application/json": {}},
        },
    },
)
def equity(
    backtest_id: RunId,
    session: SessionDep,
    points: Annotated[int, Query(ge=0, le=1_000_000, description="0: every bar")] = 1000,
) -> Response:
    """A done backtest's equity curve and drawdown, downsampled for charts."""
    if 0 < points < 2:
        points = 2
    body = service.equity_json(session, backtest_id, points)
    return Response(body, media_type="application/json")


@router.post("/{backtest_id}/cancel", responses=NOT_FOUND)
def cancel(backtest_id: RunId, session: SessionDep, request: Request) -> RunView:
    """Stop a queued or running backtest (nothing of it is saved); others stay as they are."""
    run = service.cancel(session, backtest_id)
    get_runner(request).cancel(backtest_id)
    return service.view(run)


@router.delete("/{backtest_id}", status_code=204, responses=NOT_FOUND)
def delete(backtest_id: RunId, session: SessionDep, request: Request) -> Response:
    """Delete a backtest with its trades and equity; a running one is cancelled first."""
    get_runner(request).cancel(backtest_id)
    service.delete(session, backtest_id)
    return Response(status_code=204)
