"""Per-strategy verdicts, the ensemble score and its calibrated confidence."""

from __future__ import annotations

import numpy as np
import pytest

from agents.signal import ensemble, service
from common.quant.bars import Bars
from common.quant.strategies import STRATEGIES, Signals
from tests.agents.signal.bars import sim_bars

RULES = [(s, s.defaults()) for s in STRATEGIES.values() if not s.needs_model]


def events(n: int, **marks: list[int]) -> Signals:
    arrays = {}
    for name in ("entries", "exits", "short_entries", "short_exits"):
        a = np.zeros(n, dtype=np.bool_)
        a[marks.get(name, [])] = True
        arrays[name] = a
    return Signals(**arrays, strength=np.linspace(-1, 1, n))


@pytest.mark.parametrize(
    ("marks", "action", "position"),
    [
        ({"entries": [9]}, "buy", 1),
        ({"exits": [9], "entries": [3]}, "sell", 0),
        ({"short_entries": [9]}, "sell", -1),
        ({"short_exits": [9], "short_entries": [2]}, "buy", 0),
        ({"entries": [9], "exits": [9]}, "hold", 0),
        ({"entries": [4]}, "hold", 1),
        ({"short_entries": [5], "short_exits": [7]}, "hold", 0),
        ({"entries": [2], "short_entries": [6]}, "hold", -1),
        ({}, "hold", 0),
    ],
)
def test_verdict_reads_the_last_bar_events(
    marks: dict[str, list[int]], action: str, position: int
) -> None:
    v = ensemble.verdict(events(10, **marks))
    assert (v.action, v.position) == (action, position)
    assert v.strength == 1.0


def brute_force(scores: np.ndarray, close: np.ndarray, horizon: int, first: int) -> tuple[int, int]:
    """The calibration counted one bar at a time, as a reference."""
    now = scores[-1]
    edges = [0.0, 0.25, 0.5, 0.75, 1.0]

    def bucket(x: float) -> int:
        return min(sum(x >= e for e in edges[1:-1]), 3)

    samples = hits = 0
    for i in range(first, len(scores) - horizon):
        if scores[i] == 0 or bucket(abs(scores[i])) != bucket(abs(now)):
            continue
        samples += 1
        hits += np.sign(close[i + horizon] - close[i]) == np.sign(scores[i])
    return samples, hits


@pytest.mark.parametrize("symbol", ["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT"])
@pytest.mark.parametrize("horizon", [1, 5, 24])
def test_confidence_is_the_smoothed_past_hit_rate(symbol: str, horizon: int) -> None:
    bars = sim_bars(symbol, "1h", 500)
    runs = service.run_strategies(bars, RULES, None)
    _, verdict = service.evaluate(bars, runs, horizon=horizon, threshold=0.25)
    first = max(r.lookback for r in runs)
    samples, hits = brute_force(ensemble.score(runs), bars.close, horizon, first)
    assert (verdict.basis.samples, verdict.basis.hits) == (samples, hits)
    assert samples > 20
    assert verdict.confidence == pytest.approx((hits + 1) / (samples + 2), abs=1e-6)
    assert 0.0 < verdict.confidence < 1.0


def test_confidence_varies_with_the_data_and_stays_in_range() -> None:
    confidences, samples = set(), set()
    for symbol in ("BTC/USDT", "ETH/USDT", "SOL/USDT"):
        for start_day in (20, 40, 60, 80):
            bars = sim_bars(symbol, "1h", 400, start_day=start_day)
            _, verdict = service.evaluate(
                bars, service.run_strategies(bars, RULES, None), horizon=5, threshold=0.25
            )
            assert 0.0 <= verdict.confidence <= 1.0
            confidences.add(verdict.confidence)
            samples.add(verdict.basis.samples)
    assert len(confidences) >= 8 and len(samples) >= 6


def test_calibration_uses_only_outcomes_known_at_the_last_bar() -> None:
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 300)))
    scores = rng.uniform(-1, 1, 300)
    scores[-1] = 0.6
    base = ensemble.calibrate(scores, close, 5)
    # The last `horizon` scores have no known outcome yet: whatever they are, no change.
    later = scores.copy()
    later[-5:-1] = 0.6
    assert ensemble.calibrate(later, close, 5) == base
    # The bar just before them does.
    earlier = scores.copy()
    earlier[-6] = 0.6 if abs(scores[-6]) < 0.5 or abs(scores[-6]) >= 0.75 else 0.1
    assert ensemble.calibrate(earlier, close, 5).samples != base.samples


def test_model_training_bars_are_left_out_of_the_calibration() -> None:
    bars = sim_bars("BTC/USDT", "1h", 500)
    runs = service.run_strategies(bars, RULES, None)
    _, all_bars = service.evaluate(bars, runs, horizon=5, threshold=0.25)
    cut_ts = int(bars.ts[300])
    _, later = service.evaluate(bars, runs, horizon=5, threshold=0.25, model_train_end_ts=cut_ts)
    samples, _ = brute_force(ensemble.score(runs), bars.close, 5, 301)
    assert later.basis.samples == samples < all_bars.basis.samples
    assert later.basis.excluded_until_ts == cut_ts


def test_no_opinion_and_no_history_say_one_half() -> None:
    close = np.linspace(100, 110, 50)
    flat = ensemble.calibrate(np.zeros(50), close, 5)
    assert (flat.confidence, flat.samples, flat.direction) == (0.5, 0, 0)
    short = ensemble.calibrate(np.full(4, 0.5), close[:4], 5)
    assert (short.confidence, short.samples, short.direction) == (0.5, 0, 1)


def test_ensemble_action_follows_the_score_and_threshold() -> None:
    bars: Bars = sim_bars("BTC/USDT", "1h", 500)
    runs = service.run_strategies(bars, RULES, None)
    score = float(ensemble.score(runs)[-1])
    for threshold in (0.05, 0.5, 1.0):
        _, verdict = service.evaluate(bars, runs, horizon=5, threshold=threshold)
        assert verdict.score == pytest.approx(score, abs=1e-6)
        expected = "buy" if score >= threshold else "sell" if score <= -threshold else "hold"
        assert verdict.action == expected
    assert ensemble.score(runs).min() >= -1 and ensemble.score(runs).max() <= 1
