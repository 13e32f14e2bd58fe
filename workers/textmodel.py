"""The moderation stage's trained text classifier: hashed character n-grams + logistic regression.

Why this model (scikit-learn's ``HashingVectorizer`` + ``SGDClassifier(loss="log_loss")``):

- **no vocabulary**: hashing maps n-grams to 2**18 columns without storing words, so the model
  is a fixed-size weight vector (2 MB), training needs one pass, and nothing grows with traffic;
- **character n-grams within words** (``char_wb``, 2..4) see through l33t, spacing and casing
  tricks that a word model misses ("fr33 n1tro" shares most n-grams with "free nitro");
- **linear**: scoring a batch is one sparse matrix-vector product — tens of microseconds per
  message, batched per worker batch, well inside the stage's budget; a transformer would cost
  milliseconds per message on this CPU and need a model server (the ``slow`` arm of the lab
  stands in for one with ``MODERATION_DELAY_MS``);
- **probabilities** (log loss), so a guild's rules can set block and alert thresholds.

Trained at first use from ``workers.spamdata.generate`` (seeded; a second on one core), never
unpickled from disk. ``evaluate()`` reports precision and recall on a held-out set of the same
generator with another seed (``chatscale moderation eval``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from workers import spamdata

TRAIN_N = 6000
TRAIN_SEED = 19
HOLDOUT_SEED = 2019


@dataclass(frozen=True, slots=True)
class Evaluation:
    n: int
    precision: float
    recall: float
    f1: float
    threshold: float
    train_s: float
    us_per_message: float  # batched scoring cost, per message

    def lines(self) -> list[str]:
        return [
            f"held-out messages: {self.n} (seed {HOLDOUT_SEED}; trained on {TRAIN_N}, "
            f"seed {TRAIN_SEED}, in {self.train_s:.2f} s)",
            f"threshold {self.threshold:.2f}: precision {self.precision:.3f}  "
            f"recall {self.recall:.3f}  F1 {self.f1:.3f}",
            f"scoring cost: {self.us_per_message:.1f} us per message (batches of 100)",
        ]


class TextModel:
    """Spam probability of texts; trains itself on first use (thread-safe)."""

    def __init__(self, *, n: int = TRAIN_N, seed: int = TRAIN_SEED) -> None:
        self._n, self._seed = n, seed
        self._lock = threading.Lock()
        self._vec: Any = None
        self._clf: Any = None
        self.train_s = 0.0

    def _ensure(self) -> None:
        if self._clf is not None:
            return
        with self._lock:
            if self._clf is not None:
                return
            from sklearn.feature_extraction.text import HashingVectorizer
            from sklearn.linear_model import SGDClassifier

            started = time.perf_counter()
            data = spamdata.generate(self._n, seed=self._seed)
            vec = HashingVectorizer(
                analyzer="char_wb", ngram_range=(2, 4), n_features=2**18, alternate_sign=False
            )
            clf = SGDClassifier(loss="log_loss", alpha=1e-5, max_iter=20, tol=None, random_state=0)
            clf.fit(vec.transform([t for t, _ in data]), [int(s) for _, s in data])
            self._vec, self._clf = vec, clf
            self.train_s = time.perf_counter() - started

    def train(self) -> None:
        self._ensure()

    def scores(self, texts: list[str]) -> list[float]:
        """Spam probability of each text (one batched call)."""
        if not texts:
            return []
        self._ensure()
        return [float(p) for p in self._clf.predict_proba(self._vec.transform(texts))[:, 1]]


def evaluate(model: TextModel | None = None, *, n: int = 2000, threshold: float = 0.5):
    """Precision/recall of the model on ``n`` held-out generated messages."""
    model = model or TextModel()
    model.train()
    data = spamdata.generate(n, seed=HOLDOUT_SEED)
    texts = [t for t, _ in data]
    started = time.perf_counter()
    scores: list[float] = []
    for i in range(0, len(texts), 100):
        scores += model.scores(texts[i : i + 100])
    per_message = (time.perf_counter() - started) / len(texts) * 1e6
    tp = sum(1 for s, (_, y) in zip(scores, data, strict=True) if s >= threshold and y)
    fp = sum(1 for s, (_, y) in zip(scores, data, strict=True) if s >= threshold and not y)
    fn = sum(1 for s, (_, y) in zip(scores, data, strict=True) if s < threshold and y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Evaluation(n, precision, recall, f1, threshold, model.train_s, per_message)
