"""The simulated exchange's listings and its synthetic order book.

The book around the path's mid price: the best bid and ask sit half a spread away,
then levels step outwards. When volatility rises (sigma ratio > 1) the spread and the
gaps between levels widen and each level holds less, so the same order slips more.
Level k (from 0) holds about `level_notional * (1 + k/2)` of quote currency.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal
from typing import Protocol

from agents.execution.exchange.base import Market
from agents.execution.exchange.sim_model import PathModel
from common.money import to_step

MAX_LEVELS = 60  # a market order walks at most this many levels; the rest expires


@dataclass(frozen=True)
class Fees:
    maker: Decimal = Decimal("0.001")
    taker: Decimal = Decimal("0.001")


@dataclass(frozen=True)
class MarketSpec:
    """A listed symbol: its rules, how its price moves and how deep its book is."""

    symbol: str
    amount_step: Decimal
    price_step: Decimal
    min_amount: Decimal
    min_notional: Decimal
    model: PathModel
    level_notional: Decimal  # quote currency on the first book level in normal times
    half_spread: float = 0.00005  # fraction of mid, in normal times (0.5 bp)
    level_gap: float = 0.0002  # fraction of price between levels, in normal times

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1]

    def market(self, fees: Fees) -> Market:
        return Market(
            symbol=self.symbol,
            base=self.base,
            quote=self.quote,
            amount_step=self.amount_step,
            price_step=self.price_step,
            min_amount=self.min_amount,
            min_notional=self.min_notional,
            maker_fee=fees.maker,
            taker_fee=fees.taker,
        )


def _spec(
    symbol: str,
    steps: tuple[str, str],
    price: float,
    vol: float,
    minute_volume: float,
    level_notional: str,
) -> MarketSpec:
    return MarketSpec(
        symbol=symbol,
        amount_step=Decimal(steps[0]),
        price_step=Decimal(steps[1]),
        min_amount=Decimal(steps[0]),
        min_notional=Decimal(5),
        model=PathModel(start_price=price, annual_vol=vol, minute_volume=minute_volume),
        level_notional=Decimal(level_notional),
    )


# Prices as of 2024-01-01; steps and minimums as on large spot exchanges.
DEFAULT_MARKETS: tuple[MarketSpec, ...] = (
    _spec("BTC/USDT", ("0.00001", "0.01"), 42_280.0, 0.55, 15.0, "3000"),
    _spec("ETH/USDT", ("0.0001", "0.01"), 2_280.0, 0.65, 220.0, "2500"),
    _spec("SOL/USDT", ("0.001", "0.01"), 101.0, 0.90, 3_000.0, "1500"),
    _spec("BNB/USDT", ("0.001", "0.1"), 312.0, 0.60, 300.0, "1500"),
    _spec("XRP/USDT", ("0.1", "0.0001"), 0.6150, 0.75, 250_000.0, "1500"),
)


@dataclass(frozen=True)
class Level:
    price: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Book:
    """Best bid/ask and the ladders behind them (levels are produced lazily)."""

    spec: MarketSpec
    mid: float
    ratio: float  # volatility relative to normal, clipped
    bid: Decimal
    ask: Decimal

    @property
    def amount_step(self) -> Decimal:
        return self.spec.amount_step

    def levels(self, buy: bool) -> Iterator[Level]:
        """The levels a buy (asks, rising) or a sell (bids, falling) walks through."""
        step = self.spec.price_step
        price = self.ask if buy else self.bid
        gap = Decimal(repr(self.spec.level_gap * self.ratio))
        for k in range(MAX_LEVELS):
            if k:
                moved = price * (1 + gap) if buy else price * (1 - gap)
                nxt = to_step(moved, step, ROUND_CEILING if buy else ROUND_FLOOR)
                price = max(nxt, price + step) if buy else min(nxt, price - step)
            if price <= 0:
                return
            notional = self.spec.level_notional * (1 + Decimal(k) / 2)
            size = notional / Decimal(repr(self.ratio)) / price
            amount = max(to_step(size, self.spec.amount_step, ROUND_DOWN), self.spec.amount_step)
            yield Level(price, amount)


class Depth(Protocol):
    """An order book a taker order walks: the sim's synthetic `Book`, or a real exchange's
    fetched book (`paper.FetchedBook`). `mid` is the price stops are checked against."""

    @property
    def bid(self) -> Decimal: ...
    @property
    def ask(self) -> Decimal: ...
    @property
    def mid(self) -> float | Decimal: ...
    @property
    def amount_step(self) -> Decimal: ...
    def levels(self, buy: bool) -> Iterator[Level]: ...


def make_book(spec: MarketSpec, mid: float, sigma_ratio: float) -> Book:
    ratio = min(8.0, max(0.25, sigma_ratio))
    half = spec.half_spread * ratio
    step = spec.price_step
    bid = max(step, to_step(Decimal(repr(mid * (1 - half))), step, ROUND_FLOOR))
    ask = to_step(Decimal(repr(mid * (1 + half))), step, ROUND_CEILING)
    if ask <= bid:
        ask = bid + step
    return Book(spec=spec, mid=mid, ratio=ratio, bid=bid, ask=ask)


def walk_book(
    book: Depth,
    buy: bool,
    amount: Decimal,
    limit: Decimal | None = None,
    budget: Decimal | None = None,
    fee_rate: Decimal = Decimal(0),
) -> list[Level]:
    """The fills a taker order of `amount` gets, level by level: stops at the limit
    price, when the book runs out (MAX_LEVELS) or, for a buy, when cost plus fee would
    exceed `budget`."""
    fills: list[Level] = []
    left, spent = amount, Decimal(0)
    for level in book.levels(buy):
        if left <= 0:
            break
        if limit is not None and (level.price > limit if buy else level.price < limit):
            break
        take = min(left, level.amount)
        if budget is not None:
            per_unit = level.price * (1 + fee_rate)
            take = min(take, to_step((budget - spent) / per_unit, book.amount_step))
            if take <= 0:
                break
        fills.append(Level(level.price, take))
        left -= take
        spent += take * level.price * (1 + fee_rate)
    return fills
