"""Fitted models as bytes, their SHA-256 digests, and the in-memory cache of loaded ones.

The bytes are a pickle of an estimator this agent fitted itself. Unpickling runs
code, so a blob is loaded only when its SHA-256 matches the digest stored when it
was written: bytes changed in the database (corruption, or someone's edit) are
refused, never loaded.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle  # nosec: B403 - only our own artefacts, and only after the digest matches
import threading
from collections import OrderedDict
from dataclasses import dataclass

from sklearn.base import ClassifierMixin

from common.errors import Conflict


class ModelIntegrityError(Conflict):
    """A stored model's bytes do not match their digest."""


def dump(estimator: ClassifierMixin) -> tuple[bytes, str]:
    """The estimator's bytes and their SHA-256 (hex)."""
    blob = pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL)
    return blob, hashlib.sha256(blob).hexdigest()


def load(model_id: int, blob: bytes, digest: str) -> ClassifierMixin:
    """Unpickle `blob` only if its SHA-256 is `digest`; ModelIntegrityError (409) if not."""
    actual = hashlib.sha256(blob).hexdigest()
    if not hmac.compare_digest(actual, digest):
        raise ModelIntegrityError(
            f"model {model_id}: its stored bytes do not match their SHA-256 digest (the row "
            "was altered or corrupted), so they will not be loaded; train a new model"
        )
    estimator: ClassifierMixin = pickle.loads(blob)  # noqa: S301 - verified above
    return estimator


@dataclass(frozen=True, slots=True)
class Loaded:
    model_id: int
    digest: str
    estimator: ClassifierMixin


class ModelCache:
    """Loaded estimators by model id (and digest), least recently used dropped first.

    A request never unpickles a model it has seen before; a row whose digest changed
    is loaded (and checked) afresh.
    """

    def __init__(self, size: int = 16) -> None:
        self._items: OrderedDict[int, Loaded] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, model_id: int, digest: str) -> ClassifierMixin | None:
        with self._lock:
            item = self._items.get(model_id)
            if item is None or item.digest != digest:
                return None
            self._items.move_to_end(model_id)
            return item.estimator

    def put(self, model_id: int, digest: str, estimator: ClassifierMixin) -> None:
        with self._lock:
            self._items[model_id] = Loaded(model_id, digest, estimator)
            self._items.move_to_end(model_id)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def __contains__(self, model_id: int) -> bool:
        return model_id in self._items
