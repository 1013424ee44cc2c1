"""Class probabilities for a split of the image cache, and the figures reported per epoch."""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from core.cnn.feature_cache import CachedFeatures
from core.cnn.inputs import CachedImages, batches
from core.cnn.runtime import Runtime
from core.evaluation.metrics import count_report


def predict(model: nn.Module, data: CachedImages | CachedFeatures,
            probabilities: Callable[[nn.Module, torch.Tensor], torch.Tensor], runtime: Runtime,
            batch_size: int = 64, progress: bool = False, desc: str = "evaluating") -> np.ndarray:
    """(N, classes) probabilities in `data`'s order (eval mode; the model's mode is restored).

    `data` yields (input, count) items; `probabilities(model, batch)` takes a batch of inputs as
    the loader gives them (on the CPU) and returns their probabilities.

    Under DDP every rank must call it, and every rank gets the whole array: of W ranks, rank r
    predicts photos r, r + W, r + 2W, ... (no padding, so no photo is predicted twice) with rank
    0's BatchNorm statistics, and the shares are gathered and interleaved back into order. The
    result is what one process with rank 0's model gives, up to float rounding.
    """
    if len(data) == 0:
        raise ValueError("no photos to predict")
    runtime.broadcast_buffers(model)
    share = Subset(data, range(runtime.rank, len(data), runtime.world_size))
    was_training = model.training
    model.eval()
    out = []
    loader = batches(share, batch_size, pin_memory=runtime.cuda, workers=runtime.loader_workers)
    with torch.no_grad():
        for inputs, _ in tqdm(loader, desc=desc, unit="batch", leave=False,
                              disable=not (progress and runtime.is_main)):
            out.append(probabilities(model, inputs).float().cpu())
    model.train(was_training)
    shares = runtime.gather(torch.cat(out).numpy() if out else None)  # a rank beyond the last photo has none
    classes = next(s.shape[1] for s in shares if s is not None)
    probs = np.empty((len(data), classes), dtype=np.float64)
    for rank, part in enumerate(shares):
        if part is not None:
            probs[rank::runtime.world_size] = part
    return probs


def summary(y_true, y_pred, num_classes: int, prefix: str) -> dict[str, float]:
    """Accuracy, balanced accuracy and RMSE, keys prefixed ("val_accuracy", ...)."""
    with warnings.catch_warnings():  # small splits may lack a class the model predicts
        warnings.simplefilter("ignore", UserWarning)
        figures = count_report(y_true, y_pred, num_classes).headline
    assert figures is not None  # count_report fills all three
    return {f"{prefix}_accuracy": figures.accuracy, f"{prefix}_balanced_accuracy": figures.balanced_accuracy,
            f"{prefix}_rmse": figures.rmse}


def score(probs: np.ndarray, counts: np.ndarray, num_classes: int, prefix: str = "val") -> dict[str, float]:
    """`summary` of the most probable counts, plus the mean negative log-likelihood as `<prefix>_loss`."""
    counts = np.asarray(counts, dtype=int)
    nll = -np.log(np.clip(probs[np.arange(len(counts)), counts], 1e-12, None)).mean()
    return {f"{prefix}_loss": float(nll), **summary(counts, probs.argmax(axis=1), num_classes, prefix)}


def confusion_summary(confusion: np.ndarray, prefix: str) -> dict[str, float]:
    """`summary` from a (true x predicted) confusion matrix of counts."""
    true, pred = np.nonzero(confusion)
    reps = confusion[true, pred].astype(int)
    return summary(np.repeat(true, reps), np.repeat(pred, reps), confusion.shape[0], prefix)
