"""The experiment record: what the store returns and every consumer reads, as typed fields.

The store keeps the identity and status of a run in columns and the rest as one JSON object;
`Experiment.from_row`, `Experiment.detail_fields` and `stored` are the only places that know
that shape, so no other module reads or writes a run's details by key. Figures are typed too
(`core.evaluation.metrics.SplitFigures`), built from their stored JSON here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core.evaluation.calibration import Calibration
from core.evaluation.metrics import SplitFigures


def count_label(count: int, num_classes: int, open_top: bool, short: bool = False) -> str:
    """A count as people read it; the open top class (index num_classes - 1) reads "more than K-2",
    or "K-1+" when `short`."""
    if open_top and count == num_classes - 1:
        return f"{count}+" if short else f"more than {count - 1}"
    return str(count)


# Columns of the `experiments` table that are fields of the record as they are.
COLUMN_FIELDS = ("id", "name", "family", "model", "params", "config_key", "dataset", "data_root", "status",
                 "started_at", "ended_at", "host", "pid", "device", "weights", "metrics", "error")
MODEL_FAMILIES = ("classical", "cnn", "ensemble")  # runs that count photos (LR-finder sweeps do not)
FIGURE_FIELDS = ("metrics", "val_metrics", "cv_metrics")  # stored as SplitFigures.to_dict(), {} for none


def stored(value: Any) -> Any:
    """A record field's value as the store keeps it (JSON-ready): figures as their dict, other
    dataclasses as theirs."""
    if isinstance(value, (SplitFigures, Calibration)):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _figures(data: dict[str, Any] | None) -> SplitFigures | None:
    return SplitFigures.from_dict(data) if data else None


@dataclass
class Experiment:
    """One training run: its identity, where it ran, and what it measured.

    Figures are `core.evaluation.metrics.SplitFigures` (None where the run has none): `metrics` on the test
    split (reported once), `val_metrics` on the validation split (what `best` selects on),
    `cv_metrics` out-of-fold over train+val for cross-validated runs.
    """

    id: str
    name: str
    family: str  # "classical", "cnn", "ensemble" (of finished runs) or "lr_finder"
    model: str
    params: dict[str, Any]
    config_key: str
    dataset: str
    data_root: str
    status: str  # running, finished, failed, interrupted
    started_at: float
    ended_at: float | None = None
    host: str | None = None
    pid: int | None = None
    device: str = ""
    weights: str = ""
    error: str | None = None
    metrics: SplitFigures | None = None
    # ---- details (stored as one JSON object) ----
    val_metrics: SplitFigures | None = None
    cv_metrics: SplitFigures | None = None
    folds: int = 0  # 0: one model; K: an ensemble of the K cross-validation models
    image_size: int | None = None
    num_classes: int | None = None
    open_top: bool = False  # the top class means "more than num_classes - 2" items
    train_seconds: float | None = None
    artifact: str = ""  # model file name inside the artifact folder (per fold for ensembles)
    calibration: Calibration = field(default_factory=Calibration)  # see core.evaluation.calibration.fit_calibration
    split_counts: dict[str, int] = field(default_factory=dict)  # photos per split
    recounted_photos: int = 0  # photos trained and scored with a person's recount as their label
    warnings: list[str] = field(default_factory=list)
    # CNN runs
    preset: str = ""
    recipe_notes: str = ""
    best_epoch: int | None = None
    epochs_run: int | None = None
    phase_lrs: dict[str, float] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    resumed_from_epochs: list[int] = field(default_factory=list)
    # classical runs
    selection: str = ""
    chosen_params: dict[str, Any] = field(default_factory=dict)
    cv_results: list[dict[str, Any]] = field(default_factory=list)  # the grid search, one row per setting
    probabilities: str = ""
    feature_seconds: float | None = None
    # LR-finder sweeps
    suggested_lr: float | None = None
    # ensembles (`core.training.ensemble`): member experiment id -> times chosen (its weight)
    members: dict[str, int] = field(default_factory=dict)

    @classmethod
    def detail_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in COLUMN_FIELDS)

    @classmethod
    def from_row(cls, columns: dict[str, Any], details: dict[str, Any]) -> Experiment:
        """Build from table columns and the details object; unknown detail keys (older code) are ignored."""
        known = set(cls.detail_fields())
        values = {**{k: columns[k] for k in COLUMN_FIELDS}, **{k: v for k, v in details.items() if k in known}}
        for name in FIGURE_FIELDS:
            if name in values:
                values[name] = _figures(values[name])
        values["calibration"] = Calibration.from_dict(values.get("calibration"))  # this release's JSON or older
        return cls(**values)

    @property
    def is_model(self) -> bool:
        """A finished run that counts photos (LR-finder sweeps do not)."""
        return self.status == "finished" and self.family in MODEL_FAMILIES and self.metrics is not None

    @property
    def selection_metrics(self) -> SplitFigures | None:
        """The figures models are compared on: out-of-fold for cross-validated runs, else validation."""
        return self.cv_metrics or self.val_metrics

    @property
    def selection_source(self) -> str:
        return "out-of-fold" if self.cv_metrics else "validation"

    def count_label(self, count: int, short: bool = False) -> str:
        """How a count reads: "3", or "more than 5" ("6+" when `short`) for the open top class."""
        return count_label(count, self.num_classes or 0, self.open_top, short)

    @property
    def temperature(self) -> float:
        return self.calibration.temperature
