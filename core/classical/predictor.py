"""A fitted classical pipeline on disk and the counting function over it.

Pipelines are saved with skops, not pickle: loading reads an explicit list of trusted types
(scikit-learn's own and binsight's feature extractors) and refuses a file that names any
other, so a tampered store folder cannot run code on the reader's machine.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.special import softmax
from sklearn.pipeline import Pipeline
from skops.io import dump, get_untrusted_types, load

from core.classical.features import EXTRACTORS, CappedPCA
from core.store.files import atomic_path

ARTIFACT = "pipeline.skops"
# binsight's own types in a saved pipeline; skops trusts scikit-learn's and numpy's itself
TRUSTED_TYPES = sorted(f"{cls.__module__}.{cls.__name__}" for cls in (*EXTRACTORS.values(), CappedPCA))


class UntrustedModel(ValueError):
    """A saved pipeline names a type outside the trusted list (tampered or foreign)."""


def pipeline_probabilities(pipeline: Pipeline, X, num_classes: int) -> np.ndarray:
    """(N, num_classes) probabilities: predict_proba where the model has it, else a softmax of
    the decision function (calibrated afterwards on held-out photos). Classes absent from
    training get probability 0."""
    model = pipeline[-1]
    if hasattr(model, "predict_proba"):
        probs = pipeline.predict_proba(X)
    else:
        scores = pipeline.decision_function(X)
        if scores.ndim == 1:  # two classes: one score for the second
            scores = np.column_stack([-scores, scores])
        probs = softmax(scores, axis=1)
    out = np.zeros((len(probs), num_classes))
    out[:, np.asarray(model.classes_, dtype=int)] = probs
    return out


def probability_method(pipeline: Pipeline) -> str:
    if hasattr(pipeline[-1], "predict_proba"):
        return "predict_proba"
    return "softmax of decision_function"


def save_pipeline(path: Path, pipeline: Pipeline) -> None:
    with atomic_path(path) as tmp:
        dump(pipeline, tmp)


def load_pipeline(path: Path) -> Pipeline:
    """Load a saved pipeline, refusing any type outside scikit-learn's and `TRUSTED_TYPES`."""
    try:
        untrusted = get_untrusted_types(file=path)
    except Exception as err:  # skops raises several kinds on a corrupt or foreign file
        raise UntrustedModel(f"{path} is not a readable skops model file ({err.__class__.__name__}: {err})") from err
    foreign = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if foreign:
        raise UntrustedModel(f"{path} names types binsight does not trust, refusing to load it: {', '.join(foreign)}")
    return load(path, trusted=untrusted)


def load_predictor(folder: Path, artifact: str, num_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 RGB (N, S, S, 3) -> (N, num_classes) uncalibrated class probabilities."""
    pipeline = load_pipeline(folder / artifact)

    def predict(images: np.ndarray) -> np.ndarray:
        return pipeline_probabilities(pipeline, np.asarray(images, dtype=np.uint8), num_classes)

    return predict
