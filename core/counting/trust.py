"""Per-count trust: how often a model is right when it shows a given count, from its out-of-fold
predictions (cross-validated models) or else its test predictions, the figures it was scored on."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from core.store.database import Store
from core.store.records import Experiment


@dataclass(frozen=True)
class CountTrust:
    count: int
    right: int
    n: int  # photos the model said `count` for
    source: str  # "out-of-fold" or "test"

    @property
    def share(self) -> float:
        return self.right / self.n if self.n else float("nan")


def count_trust(predictions: pd.DataFrame, source: str) -> dict[int, CountTrust]:
    """Per shown count (`pred_count`), the share of those photos whose true count it was."""
    shown, true = predictions["pred_count"].to_numpy(dtype=int), predictions["true_count"].to_numpy(dtype=int)
    return {int(c): CountTrust(int(c), int((true[shown == c] == c).sum()), int((shown == c).sum()), source)
            for c in sorted(set(shown.tolist()))}


def model_trust(store: Store, exp: Experiment) -> dict[int, CountTrust]:
    """`count_trust` on the model's out-of-fold predictions where it has them, else its test ones."""
    for split, source in (("oof", "out-of-fold"), ("test", "test")):
        predictions = store.predictions(exp.id, split)
        if not predictions.empty:
            return count_trust(predictions, source)
    return {}


def trust_line(trust: dict[int, CountTrust], count: int, label: str | None = None) -> str:
    """"when it says 3, it is right 31% of the time (n = 410, test photos)"."""
    shown = label or str(count)
    found = trust.get(count)
    if found is None:
        return f"it never said {shown} on the photos it was scored on"
    return f"when it says {shown}, it is right {found.share:.0%} of the time (n = {found.n}, {found.source} photos)"
