"""Features and labels: shapes, warm-up, labels from the future only, names checked."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import Unprocessable
from common.quant.features import (
    FEATURE_NAMES,
    WARMUP,
    feature_matrix,
    forward_returns,
    labels,
    usable_rows,
    validate_features,
)
from tests.agents.signal.bars import sim_bars


def test_matrix_shape_warmup_and_usable_rows() -> None:
    bars = sim_bars("SOL/USDT", "4h", 300)
    X = feature_matrix(bars)
    assert X.shape == (300, len(FEATURE_NAMES))
    rows = usable_rows(X)
    assert rows[0] <= WARMUP and np.isfinite(X[rows]).all()
    assert np.isnan(X[:20]).any(axis=1).all()  # nothing has 20 bars of history yet
    assert list(feature_matrix(bars, ["rsi_14", "ret_1"]).shape) == [300, 2]


@pytest.mark.parametrize("horizon", [1, 3, 12])
def test_labels_are_the_sign_of_the_forward_return(horizon: int) -> None:
    bars = sim_bars("BTC/USDT", "1h", 200)
    y = labels(bars, horizon)
    assert np.isnan(y[-horizon:]).all() and np.isfinite(y[:-horizon]).all()
    for t in range(0, 200 - horizon, 7):
        assert y[t] == float(bars.close[t + horizon] > bars.close[t])
    fwd = forward_returns(bars.close, horizon)
    np.testing.assert_array_equal(y[:-horizon], (fwd[:-horizon] > 0).astype(float))
    X = feature_matrix(bars)
    assert len(usable_rows(X, y)) == len(usable_rows(X)) - horizon


def test_feature_names_are_checked() -> None:
    assert validate_features(None) == list(FEATURE_NAMES)
    assert validate_features(["adx_14"]) == ["adx_14"]
    with pytest.raises(Unprocessable, match=r"^features\[1\]: unknown feature 'future'"):
        validate_features(["rsi_14", "future"])
    with pytest.raises(Unprocessable, match=r"^features: each feature may appear once"):
        validate_features(["rsi_14", "rsi_14"])
    with pytest.raises(Unprocessable, match=r"^features: give at least one"):
        validate_features([])
