"""The backtest agent's market-data routes: validate, call the service, return a schema."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from agents.backtest import service
from agents.backtest.events import announce
from agents.backtest.fetcher import Fetcher
from agents.backtest.repository import Series
from agents.backtest.schemas import (
    SYMBOL_INPUT,
    Coverage,
    Exchange,
    FetchRequest,
    ImportResult,
    JobView,
    StoredSeries,
    Symbol,
)
from agents.backtest.timegrid import Timeframe, TimeMs
from common.auth import CallerDep
from common.contracts import EXCHANGE_PATTERN
from common.db import SessionDep
from common.errors import Problem, Unprocessable
from common.service import AgentsDep, KitDep

router = APIRouter(prefix="/data", tags=["market data"])
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
ExchangePath = Annotated[str, Path(pattern=EXCHANGE_PATTERN)]
SymbolPath = Annotated[str, Path(pattern=SYMBOL_INPUT, description="with a dash: BTC-USDT")]
UNPROCESSABLE: dict[int | str, dict[str, Any]] = {
    422: {"model": Problem, "description": "the request names what to fix"}
}


def get_fetcher(request: Request) -> Fetcher:
    fetcher: Fetcher = request.app.state.fetcher
    return fetcher


@router.post("/fetch", status_code=202, responses=UNPROCESSABLE)
async def fetch(
    body: FetchRequest,
    session: SessionDep,
    agents: AgentsDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    background: BackgroundTasks,
) -> JobView:
    """Queue a background fetch of candles from an exchange; follow it at /data/jobs/{id}."""
    job = await service.create_job(session, agents, body, caller.name)
    # Started once the response is out: the job row is committed by then.
    background.add_task(get_fetcher(request).start, job.id)
    response.headers["Location"] = f"/data/jobs/{job.id}"
    return service.job_view(job)


@router.get("/jobs")
def list_jobs(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[JobView]:
    """Fetch jobs, newest first."""
    return [service.job_view(job) for job in service.list_jobs(session, limit)]


@router.get("/jobs/{job_id}")
def get_job(job_id: Annotated[str, Path(max_length=32)], session: SessionDep) -> JobView:
    """One fetch job: status, progress (done of total), rows written, gaps, error."""
    return service.job_view(service.get_job(session, job_id))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    job_id: Annotated[str, Path(max_length=32)], session: SessionDep, request: Request
) -> JobView:
    """Stop a queued or running job; what it stored stays (a new fetch skips it)."""
    job = service.cancel_job(session, job_id)
    get_fetcher(request).cancel(job_id)
    return service.job_view(job)


class ImportParams(BaseModel):
    exchange: Exchange
    symbol: Symbol
    timeframe: Timeframe


_IMPORT_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "exchange": {"type": "string"},
                        "symbol": {"type": "string"},
                        "timeframe": {"type": "string"},
                    },
                }
            },
            "text/csv": {"schema": {"type": "string"}},
        }
    }
}


@router.post("/import", status_code=201, responses=UNPROCESSABLE, openapi_extra=_IMPORT_BODY)
async def import_csv(
    request: Request, session: SessionDep, kit: KitDep, background: BackgroundTasks
) -> ImportResult:
    """Import candles from a CSV (timestamp, open, high, low, close, volume): all or nothing.

    Send it as multipart `file` with exchange, symbol and timeframe as form or query
    fields, or as a text/csv body with them in the query.
    """
    data, fields = await _upload(request)
    try:
        params = ImportParams.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]
        ) from None
    series = Series(params.exchange, params.symbol, params.timeframe)
    result = await asyncio.to_thread(service.import_csv, session, series, data)
    background.add_task(announce, kit.events, series)  # runs after the commit
    return result


async def _upload(request: Request) -> tuple[bytes, dict[str, Any]]:
    if int(request.headers.get("content-length") or 0) > MAX_UPLOAD_BYTES:
        raise Unprocessable(f"file: larger than {MAX_UPLOAD_BYTES // 2**20} MiB; split it")
    fields: dict[str, Any] = dict(request.query_params)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise Unprocessable(
                "file: missing; send the CSV as the multipart field `file`",
                errors=[{"field": "body.file", "message": "missing"}],
            )
        fields |= {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
        return await upload.read(), fields
    if content_type.startswith(("text/csv", "text/plain", "application/csv")):
        return await request.body(), fields
    raise Unprocessable(
        "send the CSV as multipart/form-data (field `file`) or as a text/csv body",
        errors=[{"field": "body", "message": f"unsupported content type {content_type!r}"}],
    )


@router.get("/symbols/{exchange}")
def symbols(exchange: ExchangePath, session: SessionDep) -> list[StoredSeries]:
    """Stored symbols on an exchange, per timeframe: first and last candle, count."""
    return service.stored_series(session, exchange)


@router.get(
    "/ohlcv/{exchange}/{symbol}",
    responses={
        200: {
            "description": "columns: ts (epoch ms, candle open), open, high, low, close, volume",
            "content": {"application/json": {}},
        },
        404: {"model": Problem, "description": "nothing stored to answer from"},
    },
)
def ohlcv(
    exchange: ExchangePath,
    symbol: SymbolPath,
    kit: KitDep,
    timeframe: Timeframe = "1h",
    since: Annotated[TimeMs | None, Query(description="ISO-8601 or epoch ms")] = None,
    until: Annotated[TimeMs | None, Query(description="exclusive; ISO-8601 or epoch ms")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_BARS_OUT)] = 500,
) -> Response:
    """Stored candles as columns; a longer timeframe than stored is built from shorter ones.

    With `since`: the first `limit` candles from it; without: the last `limit` before
    `until` (or the newest). Built candles the data does not cover end to end are left
    out and listed in `excluded_partial`.
    """
    series = Series(exchange, symbol.replace("-", "/").upper(), timeframe)
    # One pooled connection, no ORM session: this route is read by charts and loops.
    with service.read_connection(kit) as conn:
        body = service.ohlcv_json(conn, series, since, until, limit)
    return Response(body, media_type="application/json")


@router.get("/coverage")
def coverage(
    session: SessionDep,
    exchange: Annotated[str | None, Query(pattern=EXCHANGE_PATTERN)] = None,
    symbol: Annotated[str | None, Query(pattern=SYMBOL_INPUT)] = None,
) -> list[Coverage]:
    """Per stored series: first, last, count, expected count and the number of gaps."""
    normal = None if symbol is None else symbol.replace("-", "/").upper()
    return service.coverage(session, exchange, normal)
