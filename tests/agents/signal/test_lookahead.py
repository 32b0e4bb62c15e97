"""No look-ahead: changing bars after t never changes a strategy's events or strength, a
feature, an indicator or a model's prediction at or before t."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from agents.signal import indicators
from agents.signal.training import predict
from common.quant.bars import Bars
from common.quant.features import FEATURE_NAMES, FEATURES, feature_matrix, labels, usable_rows
from common.quant.strategies import STRATEGIES, Context
from tests.agents.signal.bars import sim_bars

CUTS = (120, 300, 498)


def perturbed_after(bars: Bars, t: int, seed: int = 0) -> Bars:
    """The same bars up to t; after t, a different (still valid) market."""
    rng = np.random.default_rng(seed)
    n = len(bars) - t - 1
    shock = np.exp(np.cumsum(rng.normal(0, 0.03, n)))

    def tail(a: np.ndarray, f: np.ndarray) -> np.ndarray:
        out = a.copy()
        out[t + 1 :] = a[t + 1 :] * f
        return out

    high = tail(bars.high, shock * 1.01)
    low = tail(bars.low, shock * 0.99)
    return Bars(
        bars.ts,
        tail(bars.open, shock),
        high,
        low,
        tail(bars.close, shock),
        tail(bars.volume, rng.uniform(0.2, 5.0, n)),
    )


@pytest.fixture(scope="module")
def bars() -> Bars:
    return sim_bars("ETH/USDT", "1h", 500)


@pytest.mark.parametrize("name", [n for n, s in STRATEGIES.items() if not s.needs_model])
@pytest.mark.parametrize("cut", CUTS)
def test_strategy_past_does_not_see_the_future(bars: Bars, name: str, cut: int) -> None:
    strategy = STRATEGIES[name]
    params = strategy.defaults()
    a = strategy.generate(bars, params)
    b = strategy.generate(perturbed_after(bars, cut), params)
    for field in ("entries", "exits", "short_entries", "short_exits", "strength"):
        past_a, past_b = getattr(a, field)[: cut + 1], getattr(b, field)[: cut + 1]
        np.testing.assert_array_equal(past_a, past_b, err_msg=f"{name}.{field}")
    # The perturbation is real: the future did change.
    assert not np.array_equal(a.strength[cut + 1 :], b.strength[cut + 1 :])


@pytest.mark.parametrize("feature", FEATURE_NAMES)
@pytest.mark.parametrize("cut", CUTS)
def test_feature_past_does_not_see_the_future(bars: Bars, feature: str, cut: int) -> None:
    a = FEATURES[feature][0](bars)
    b = FEATURES[feature][0](perturbed_after(bars, cut))
    np.testing.assert_array_equal(a[: cut + 1], b[: cut + 1], err_msg=feature)
    assert not np.array_equal(a[cut + 1 :], b[cut + 1 :], equal_nan=True), feature


@pytest.mark.parametrize("item", indicators.parse(None), ids=lambda r: r.key)
def test_indicator_past_does_not_see_the_future(bars: Bars, item: indicators.Requested) -> None:
    cut = 300
    a, b = item.compute(bars), item.compute(perturbed_after(bars, cut))
    for output in a:
        np.testing.assert_array_equal(a[output][: cut + 1], b[output][: cut + 1], err_msg=output)


def test_only_labels_look_ahead(bars: Bars) -> None:
    cut, horizon = 300, 5
    changed = perturbed_after(bars, cut)
    before, after = feature_matrix(bars), feature_matrix(changed)
    np.testing.assert_array_equal(before[: cut + 1], after[: cut + 1])
    a, b = labels(bars, horizon), labels(changed, horizon)
    # Labels up to cut - horizon are settled by then; later ones depend on the future.
    np.testing.assert_array_equal(a[: cut - horizon + 1], b[: cut - horizon + 1])
    assert not np.array_equal(a[cut - horizon + 1 : -horizon], b[cut - horizon + 1 : -horizon])


def test_model_predictions_and_ml_signals_do_not_see_the_future(bars: Bars) -> None:
    history = sim_bars("ETH/USDT", "1h", 1000, start_day=1)
    X, y = feature_matrix(history), labels(history, 5)
    rows = usable_rows(X, y)
    model = LogisticRegression(max_iter=1000).fit(X[rows], y[rows])
    cut = 300
    changed = perturbed_after(bars, cut)
    names = list(FEATURE_NAMES)
    p_a, p_b = predict(model, bars, names), predict(model, changed, names)
    np.testing.assert_array_equal(p_a[: cut + 1], p_b[: cut + 1])
    ml = STRATEGIES["ml"]
    params = ml.defaults()
    s_a = ml.generate(bars, params, Context(predictions=p_a))
    s_b = ml.generate(changed, params, Context(predictions=p_b))
    for field in ("entries", "exits", "strength"):
        past_a, past_b = getattr(s_a, field)[: cut + 1], getattr(s_b, field)[: cut + 1]
        np.testing.assert_array_equal(past_a, past_b)
