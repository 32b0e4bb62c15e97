"""Walk-forward training: purged splits, metrics, the backtest step, the model bytes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.signal import artifacts, training
from common.errors import Unprocessable
from common.quant.bars import TIMEFRAME_MS, Bars
from common.quant.features import FEATURE_NAMES, feature_matrix, labels, usable_rows
from tests.agents.signal.bars import sim_bars


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(30, 3000),
    splits=st.integers(2, 20),
    horizon=st.integers(1, 200),
    holes=st.lists(st.integers(0, 2999), max_size=40),
)
def test_no_training_label_window_reaches_into_its_test_window(
    n: int, splits: int, horizon: int, holes: list[int]
) -> None:
    rows = np.setdiff1d(np.arange(n), holes).astype(np.int64)  # usable rows may have gaps
    folds = training.walk_forward_splits(rows, splits, horizon)
    previous_end = -1
    for train, test in folds:
        assert len(test) > 0
        assert test[0] > previous_end  # folds move forward in time and never overlap
        previous_end = int(test[-1])
        assert np.isin(test, rows).all() and np.isin(train, rows).all()
        if len(train):
            # The label of the last training row looks `horizon` bars ahead: still before
            # the first test bar.
            assert train.max() + horizon < test.min()
            assert not np.intersect1d(train, test).size
        # Nothing that could have been used was left out either.
        assert len(train) == int((rows + horizon < test[0]).sum())


def test_training_reports_out_of_sample_metrics_and_purged_folds() -> None:
    bars = sim_bars("BTC/USDT", "1h", 1500)
    result = training.train(
        bars,
        kind="logistic_regression",
        params=training.validate_params("logistic_regression", None),
        features=list(FEATURE_NAMES),
        horizon=6,
        splits=4,
        timeframe="1h",
        threshold=0.55,
        fee_rate=0.001,
    )
    m = result.metrics
    assert len(m["folds"]) == 4
    for fold in m["folds"]:
        assert fold["train_until_ts"] + 6 * TIMEFRAME_MS["1h"] < fold["test_from_ts"]
    oos = m["out_of_sample"]
    assert oos["samples"] == sum(f["test_rows"] for f in m["folds"])
    for key in ("accuracy", "precision", "recall", "auc"):
        assert 0.0 <= oos[key] <= 1.0
    # The sim is a random walk: nothing out of sample should look like skill.
    assert 0.4 < oos["accuracy"] < 0.6 and 0.4 < oos["auc"] < 0.6
    assert m["backtest"]["bars"] > 0 and 0.0 <= m["backtest"]["exposure"] <= 1.0
    X, y = feature_matrix(bars), labels(bars, 6)
    rows = usable_rows(X, y)
    assert result.rows == len(rows) and result.train_end_ts == int(bars.ts[rows[-1]])


def test_a_leaked_future_column_is_exactly_what_the_split_exposes() -> None:
    """A 'feature' that is the label itself scores perfectly out of sample: the metrics
    judge predictions on labels the model never trained on, so honest features that
    score ~0.5 (the test above) are not being flattered by the split."""
    bars = sim_bars("ETH/USDT", "1h", 1200)
    X, y = feature_matrix(bars), labels(bars, 3)
    rows = usable_rows(X, y)
    from sklearn.linear_model import LogisticRegression

    leaked = np.column_stack([X, y])
    right = total = 0
    for train, test in training.walk_forward_splits(rows, 4, 3):
        model = LogisticRegression(max_iter=1000).fit(leaked[train], y[train])
        right += int((model.predict(leaked[test]) == y[test]).sum())
        total += len(test)
    assert right / total > 0.95


def test_backtest_of_predictions_by_hand() -> None:
    close = np.array([100.0, 110.0, 99.0, 99.0, 108.9, 120.0])
    proba = np.array([0.4, 0.9, 0.2, 0.9, 0.9, np.nan])
    bars = Bars(np.arange(6, dtype=np.int64) * 3_600_000, close, close, close, close, close)
    result = training.backtest_predictions(
        bars, proba, timeframe="1h", threshold=0.5, fee_rate=0.01
    )
    # Bars 0-4 have predictions. Crosses at the close: buy 110 (bar 1), sell 99 (bar 2),
    # buy 99 (bar 3), still long at 108.9 (bar 4, marked without an exit fee). All-in with
    # a 1 % fee: each buy spends cash on size x price x 1.01, a sell keeps 99 %.
    expected = (99 * 0.99 / (110 * 1.01)) * (108.9 / (99 * 1.01)) - 1
    assert result["total_return"] == pytest.approx(expected, abs=1e-9)
    assert result["trade_count"] == 2 and result["bars"] == 5
    assert result["buy_and_hold_return"] == pytest.approx(0.089)


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("random_forest", {"n_trees": 10}, "params.n_trees"),
        ("random_forest", {"max_depth": 0}, "params.max_depth"),
        ("gradient_boosting", {"learning_rate": "fast"}, "params.learning_rate"),
        ("logistic_regression", {"C": -1}, "params.C"),
    ],
)
def test_bad_model_params_name_the_field(kind: str, params: dict[str, object], field: str) -> None:
    with pytest.raises(Unprocessable) as caught:
        training.validate_params(kind, params)
    assert caught.value.message.startswith(field + ":")


def test_too_few_bars_is_a_422_on_limit() -> None:
    with pytest.raises(Unprocessable, match=r"^limit: only \d+ bars"):
        training.train(
            sim_bars("BTC/USDT", "1h", 200),
            kind="logistic_regression",
            params=training.validate_params("logistic_regression", None),
            features=list(FEATURE_NAMES),
            horizon=5,
            splits=5,
            timeframe="1h",
            threshold=0.55,
            fee_rate=0.001,
        )


def test_model_bytes_load_only_with_their_digest() -> None:
    bars = sim_bars("BTC/USDT", "1h", 800)
    X, y = feature_matrix(bars), labels(bars, 5)
    rows = usable_rows(X, y)
    params = training.validate_params("gradient_boosting", {"n_estimators": 20})
    model = training.make_estimator("gradient_boosting", params)
    model.fit(X[rows], y[rows])
    blob, digest = artifacts.dump(model)
    loaded = artifacts.load(1, blob, digest)
    np.testing.assert_array_equal(loaded.predict_proba(X[rows]), model.predict_proba(X[rows]))  # type: ignore[attr-defined]
    tampered = bytearray(blob)
    tampered[len(tampered) // 2] ^= 0x01
    with pytest.raises(artifacts.ModelIntegrityError) as caught:
        artifacts.load(7, bytes(tampered), digest)
    assert caught.value.status_code == 409 and "model 7" in caught.value.message
    # Another (valid) pickle under the old digest is refused too: the digest pins the bytes.
    with pytest.raises(artifacts.ModelIntegrityError):
        artifacts.load(7, pickle.dumps({"not": "a model"}), digest)


def test_model_cache_is_keyed_by_id_and_digest() -> None:
    cache = artifacts.ModelCache(size=2)
    a, b, c = object(), object(), object()
    cache.put(1, "d1", a)  # type: ignore[arg-type]
    cache.put(2, "d2", b)  # type: ignore[arg-type]
    assert cache.get(1, "d1") is a and cache.get(1, "other") is None
    cache.put(3, "d3", c)  # type: ignore[arg-type]
    assert 2 not in cache and cache.get(1, "d1") is a and cache.get(3, "d3") is c
