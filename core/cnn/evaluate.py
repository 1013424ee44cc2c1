"""Class probabilities for a split of the image cache, and the figures reported per epoch."""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.cnn.inputs import CachedRows, DeviceBatches, in_batches
from core.cnn.runtime import Runtime
from core.evaluation.metrics import count_report


def predict(model: nn.Module, data: CachedRows, probabilities: Callable[[nn.Module, torch.Tensor], torch.Tensor],
            runtime: Runtime, batch_size: int | None = None, progress: bool = False,
            desc: str = "evaluating") -> np.ndarray:
    """(N, classes) probabilities in `data`'s order (eval mode; the model's mode is restored).

    `probabilities(model, batch)` takes a batch of the array's rows on the device and returns their
    probabilities. Batches are `runtime.predict_batch` photos unless `batch_size` says otherwise.

    Under DDP every rank must call it, and every rank gets the whole array: of W ranks, each
    predicts one of W contiguous shares of `data` (no padding, so no photo is predicted twice),
    read in row order, with rank 0's BatchNorm statistics, and the shares are gathered and put
    back in order. The result is what one process with rank 0's model gives, up to float rounding.
    """
    if len(data) == 0:
        raise ValueError("no photos to predict")
    runtime.broadcast_buffers(model)
    share = np.array_split(np.arange(len(data)), runtime.world_size)[runtime.rank]
    share = share[np.argsort(data.rows[share], kind="stable")]  # an ascending read of the array
    batches = DeviceBatches(data, in_batches(share, batch_size or runtime.predict_batch), runtime.device)
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for inputs, _ in tqdm(batches, desc=desc, unit="batch", leave=False,
                              disable=not (progress and runtime.is_main)):
            out.append(probabilities(model, inputs).float())  # kept on the device: no wait for each batch
    model.train(was_training)
    # a rank beyond the last photo has none
    shares = runtime.gather((share, torch.cat(out).cpu().numpy()) if out else None)
    classes = next(part.shape[1] for _, part in filter(None, shares))
    probs = np.empty((len(data), classes), dtype=np.float64)
    for positions, part in filter(None, shares):
        probs[positions] = part
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
