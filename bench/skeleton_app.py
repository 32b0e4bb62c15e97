"""The guarded order path with nothing but its bones, for bench/order_path.py.

Three FastAPI apps under uvicorn, as the fleet runs: `front` (playing execution) takes
`POST /orders`, commits a pending row, asks `risk` and `compliance` (each commits a
decision row) at once over HTTP, then commits the order as filled and answers 201. The
same hops and synchronous commits as an order (claim, two decisions, record), no
rules, no ORM, no exchange, no audit trail: what the machine can do with the path's
shape alone. Not part of the product.

    SKELETON_ROLE=front SKELETON_DB=postgresql://... SKELETON_PEERS=http://...,http://... \
        python -m uvicorn bench.skeleton_app:app --port N
"""

from __future__ import annotations

import asyncio
import os
import queue
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import orjson
import psycopg2
from fastapi import FastAPI
from pydantic import BaseModel

ROLE = os.environ.get("SKELETON_ROLE", "front")
DB = os.environ.get("SKELETON_DB", "")
PEERS = [url for url in os.environ.get("SKELETON_PEERS", "").split(",") if url]
POOL_SIZE = 16


class Pool:
    """A fixed set of psycopg2 connections handed out one per worker thread's statement."""

    def __init__(self, dsn: str, size: int) -> None:
        self.free: queue.Queue[Any] = queue.Queue()
        for _ in range(size):
            self.free.put(psycopg2.connect(dsn))

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        conn = self.free.get()
        try:
            with conn, conn.cursor() as cursor:  # commits on exit
                yield cursor
        finally:
            self.free.put(conn)


class Order(BaseModel):
    symbol: str
    side: str
    type: str
    amount: str
    client_order_id: str


TABLES = (
    "CREATE TABLE skeleton_orders (id bigserial PRIMARY KEY, client_order_id text UNIQUE"
    " NOT NULL, symbol text, side text, amount numeric, status text NOT NULL)",
    "CREATE TABLE skeleton_decisions (id bigserial PRIMARY KEY, service text NOT NULL,"
    " client_order_id text NOT NULL, approved boolean)",
)
state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> Any:
    pool = Pool(DB, POOL_SIZE)  # (the bench creates the tables: TABLES)
    state["pool"] = pool
    state["http"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
    yield
    await state["http"].close()


app = FastAPI(lifespan=lifespan)


def _claim(order: Order) -> None:
    with state["pool"].transaction() as cur:
        cur.execute(
            "INSERT INTO skeleton_orders (client_order_id, symbol, side, amount, status)"
            " VALUES (%s, %s, %s, %s, 'pending')",
            (order.client_order_id, order.symbol, order.side, order.amount),
        )


def _filled(client_order_id: str) -> None:
    with state["pool"].transaction() as cur:
        cur.execute(
            "UPDATE skeleton_orders SET status = 'filled' WHERE client_order_id = %s",
            (client_order_id,),
        )


def _decide(client_order_id: str) -> None:
    with state["pool"].transaction() as cur:
        cur.execute(
            "INSERT INTO skeleton_decisions (service, client_order_id, approved)"
            " VALUES (%s, %s, true)",
            (ROLE, client_order_id),
        )


async def _ask(url: str, body: bytes) -> Any:
    headers = {"Content-Type": "application/json"}
    async with state["http"].post(url + "/check", data=body, headers=headers) as response:
        return orjson.loads(await response.read())


@app.post("/orders", status_code=201)
async def orders(order: Order) -> dict[str, str]:
    await asyncio.to_thread(_claim, order)
    body = orjson.dumps(order.model_dump())
    answers = await asyncio.gather(*(_ask(url, body) for url in PEERS))
    if not all(answer["approved"] for answer in answers):
        return {"client_order_id": order.client_order_id, "status": "rejected"}
    await asyncio.to_thread(_filled, order.client_order_id)
    return {"client_order_id": order.client_order_id, "status": "filled"}


@app.post("/check")
async def check(order: Order) -> dict[str, bool]:
    await asyncio.to_thread(_decide, order.client_order_id)
    return {"approved": True}
