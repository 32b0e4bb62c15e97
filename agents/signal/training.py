"""Training a model on bars with walk-forward validation, and trading its predictions.

Validation is an expanding window: the usable rows are cut into `splits + 1` blocks
in time order; fold k trains on every row that ends before block k and tests on
block k. A row's label looks `horizon` bars ahead, so a training row i is kept only
when its label window [i, i + horizon] ends before the first test bar: no label in
training has seen a price inside the test window (a purge of `horizon` bars).
The metrics are those of the out-of-sample predictions of all folds together; the
stored model is then fitted on every labelled row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common.errors import Unprocessable
from common.quant.bars import Bars, Floats
from common.quant.engine import EngineConfig, run_backtest
from common.quant.features import feature_matrix, labels, usable_rows
from common.quant.strategies import Context, Param, get_strategy

Ints = np.ndarray[Any, np.dtype[np.int64]]
MIN_TRAIN_ROWS = 100
MIN_TEST_ROWS = 20
BACKTEST_STATS = (
    "bars",
    "trade_count",
    "exposure",
    "total_return",
    "buy_and_hold_return",
    "sharpe",
    "max_drawdown",
    "win_rate",
    "final_equity",
)

# kind -> its hyper-parameters (defaults and bounds).
KINDS: dict[str, tuple[Param, ...]] = {
    "logistic_regression": (
        Param("C", 1.0, 1e-4, 1e4, integer=False, doc="inverse regularisation strength"),
        Param("max_iter", 1000, 50, 20_000),
    ),
    "random_forest": (
        Param("n_estimators", 100, 10, 1000),
        Param("max_depth", 5, 1, 32),
        Param("min_samples_leaf", 20, 1, 10_000),
    ),
    "gradient_boosting": (
        Param("n_estimators", 100, 10, 1000),
        Param("max_depth", 3, 1, 10),
        Param("learning_rate", 0.05, 0.001, 1.0, integer=False),
        Param("subsample", 1.0, 0.1, 1.0, integer=False),
    ),
}


def validate_params(kind: str, raw: Mapping[str, Any] | None) -> dict[str, float]:
    """Defaults overlaid with `raw`, checked; a 422 naming `params.<name>` otherwise."""
    spec = {p.name: p for p in KINDS[kind]}
    params = {name: p.default for name, p in spec.items()}
    for name, value in (raw or {}).items():
        if name not in spec:
            raise Unprocessable(
                f"params.{name}: {kind} has no parameter {name!r}; it takes {', '.join(spec)}",
                field=f"params.{name}",
            )
        params[name] = spec[name].parse(value, f"params.{name}")
    return params


def make_estimator(kind: str, params: Mapping[str, float]) -> ClassifierMixin:
    p = dict(params)
    if kind == "logistic_regression":
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=p["C"], max_iter=int(p["max_iter"]))
        )
    if kind == "random_forest":
        return RandomForestClassifier(
            n_estimators=int(p["n_estimators"]),
            max_depth=int(p["max_depth"]),
            min_samples_leaf=int(p["min_samples_leaf"]),
            random_state=0,
            n_jobs=1,
        )
    return GradientBoostingClassifier(
        n_estimators=int(p["n_estimators"]),
        max_depth=int(p["max_depth"]),
        learning_rate=p["learning_rate"],
        subsample=p["subsample"],
        random_state=0,
    )


# --- walk-forward splits -------------------------------------------------------------------
def walk_forward_splits(rows: Ints, splits: int, horizon: int) -> list[tuple[Ints, Ints]]:
    """(train, test) bar indices per fold, from the usable rows (sorted bar indices).

    Every training row's label window ends before the fold's first test bar:
    `train.max() + horizon < test.min()`.
    """
    size = len(rows) // (splits + 1)
    folds = []
    for k in range(1, splits + 1):
        test = rows[k * size : len(rows) if k == splits else (k + 1) * size]
        if len(test) == 0:
            continue
        train = rows[rows + horizon < test[0]]
        folds.append((train, test))
    return folds


# --- metrics ---------------------------------------------------------------------------------
def classification_metrics(y: Floats, proba: Floats) -> dict[str, Any]:
    predicted = (proba > 0.5).astype(np.float64)
    both = len(np.unique(y)) == 2
    return {
        "samples": len(y),
        "accuracy": round(float(accuracy_score(y, predicted)), 6),
        "precision": round(float(precision_score(y, predicted, zero_division=0.0)), 6),
        "recall": round(float(recall_score(y, predicted, zero_division=0.0)), 6),
        "auc": round(float(roc_auc_score(y, proba)), 6) if both else None,
        "base_rate": round(float(y.mean()), 6) if len(y) else None,
    }


def backtest_predictions(
    bars: Bars,
    proba: Floats,
    *,
    timeframe: str,
    threshold: float,
    fee_rate: float,
) -> dict[str, Any]:
    """Trade the predictions with the `ml` strategy on the backtest engine, as a backtest
    or the autonomous loop would: long when P(up) crosses above `threshold`, out when it
    falls below 1 - threshold; all-in, fills at the deciding bar's close, `fee_rate` per
    fill. Only the span from the first to the last prediction is traded."""
    known = np.flatnonzero(np.isfinite(proba))
    if len(known) < 2:
        return {"bars": 0, "trades": 0, "total_return": 0.0}
    first, last = int(known[0]), int(known[-1]) + 1
    window = bars.slice(first, last)
    strategy = get_strategy("ml")
    params = strategy.validate({"threshold": threshold})
    signals = strategy.generate(window, params, Context(predictions=proba[first:last]))
    config = EngineConfig(fee_rate=fee_rate, fill="close", timeframe=timeframe)
    stats = run_backtest(window, signals, config).stats
    out = {name: stats[name] for name in BACKTEST_STATS}
    return {**out, "fee_rate": fee_rate, "threshold": threshold, "fill": "close"}


# --- training --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingResult:
    estimator: ClassifierMixin
    metrics: dict[str, Any]
    rows: int
    train_start_ts: int
    train_end_ts: int


def _fold_summary(bars: Bars, train: Ints, test: Ints, y: Floats, proba: Floats) -> dict[str, Any]:
    m = classification_metrics(y, proba)
    return {
        "train_rows": len(train),
        "test_rows": len(test),
        "train_until_ts": int(bars.ts[train[-1]]),
        "test_from_ts": int(bars.ts[test[0]]),
        "test_to_ts": int(bars.ts[test[-1]]),
        "accuracy": m["accuracy"],
        "auc": m["auc"],
    }


def _check_enough(rows: Ints, splits: int, horizon: int) -> None:
    needed = MIN_TRAIN_ROWS + horizon + splits * MIN_TEST_ROWS
    if len(rows) < needed:
        raise Unprocessable(
            f"limit: only {len(rows)} bars have features and a label; {splits} walk-forward "
            f"splits with horizon {horizon} need at least {needed} (ask for more bars, or "
            "fewer splits)",
            field="limit",
        )


def train(
    bars: Bars,
    *,
    kind: str,
    params: Mapping[str, float],
    features: list[str],
    horizon: int,
    splits: int,
    timeframe: str,
    threshold: float,
    fee_rate: float,
) -> TrainingResult:
    """Walk-forward validate, then fit on every labelled row. CPU-bound: call it in a thread."""
    X = feature_matrix(bars, features)
    y = labels(bars, horizon)
    rows = usable_rows(X, y)
    _check_enough(rows, splits, horizon)
    oos = np.full(len(bars), np.nan)
    folds = []
    for train_rows, test_rows in walk_forward_splits(rows, splits, horizon):
        if len(train_rows) < MIN_TRAIN_ROWS or len(np.unique(y[train_rows])) < 2:
            continue  # too little (or one-sided) history for this fold to learn from
        model = make_estimator(kind, params).fit(X[train_rows], y[train_rows])
        oos[test_rows] = model.predict_proba(X[test_rows])[:, 1]
        folds.append(_fold_summary(bars, train_rows, test_rows, y[test_rows], oos[test_rows]))
    tested = np.flatnonzero(np.isfinite(oos))
    if len(tested) == 0:
        raise Unprocessable("limit: no fold had enough varied history to learn from", field="limit")
    metrics = {
        "validation": "walk-forward, expanding window, purged by horizon",
        "splits": splits,
        "folds": folds,
        "out_of_sample": classification_metrics(y[tested], oos[tested]),
        "backtest": backtest_predictions(
            bars, oos, timeframe=timeframe, threshold=threshold, fee_rate=fee_rate
        ),
    }
    final = make_estimator(kind, params).fit(X[rows], y[rows])
    return TrainingResult(final, metrics, len(rows), int(bars.ts[rows[0]]), int(bars.ts[rows[-1]]))


def predict(estimator: ClassifierMixin, bars: Bars, features: list[str]) -> Floats:
    """P(up over the model's horizon) per bar; NaN where a feature is still warming up."""
    X = feature_matrix(bars, features)
    rows = usable_rows(X)
    out = np.full(len(bars), np.nan)
    if len(rows):
        out[rows] = estimator.predict_proba(X[rows])[:, 1]
    return out
