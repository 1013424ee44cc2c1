"""The counting service: load any finished experiment and count the items in bin photos.

Every model family exposes `load_predictor(folder, artifact, num_classes)`: uint8 RGB arrays
at the experiment's `image_size` in, class probabilities out. The experiment's calibration
turns them into likelihoods; a cross-validated experiment is K such models, served as the mean
of their likelihoods. An ensemble (`core.training.ensemble`) is several experiments, each reading
the photo decoded at its own size, served as the weighted mean of their likelihoods under the
ensemble's own calibration map. What a counter shows is the posterior under its stated prior
(`core.evaluation.priors`: uniform by default, ABID's natural mix, or the batch's own mix, estimated),
and the count shown is its most probable count (`core.evaluation.calibration.decide`). Photos reach
the models through `core.data.images.load_rgb`, the same decoder that filled the training cache, so
training and serving see identical pixels. Loading only loads: calibration happened when the
experiment was trained.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from core.classical.predictor import load_predictor as load_classical
from core.cnn.predictor import load_predictor as load_cnn
from core.cnn.runtime import ENGINES
from core.data.collection import load_collection
from core.data.images import ImageError, ImageSource, decode_workers, decoded_batches, load_rgb_sizes
from core.data.sources import photo_sources
from core.evaluation.calibration import Calibration, decide
from core.evaluation.metrics import SplitFigures, ece_by_prior, expected_count, split_figures
from core.evaluation.priors import DEFAULT_PRIOR, PRIORS, BatchMix, batch_mix, stated_prior, with_prior
from core.store.database import Store, best_of, same_root
from core.store.layout import fold_dir
from core.store.records import Experiment

Predictor = Callable[[np.ndarray], np.ndarray]
LOADERS: dict[str, Callable[[Path, str, int], Predictor]] = {"classical": load_classical, "cnn": load_cnn}
# Photos a counter scores at once by default, where the network runs on the CPU and on a GPU. On one
# H200 (issue 26) the service counted 761 img/s in batches of 64 and 1,225 in batches of 256.
CPU_BATCH, GPU_BATCH = 64, 256


class ModelNotFound(LookupError):
    """No finished experiment matches what was asked for."""


@dataclass
class CountResult:
    count: int  # the number of items shown: the most probable count of `probs` (`core.evaluation.calibration.decide`)
    probs: list[float]  # probability of each count 0..num_classes-1, under `prior`
    expected: float  # probability-weighted mean count
    confidence: float  # probability of `count`
    prior: list[float]  # the prior `probs` are under (see `BinCounter.prior_name`)
    batch: BatchMix | None = None  # under the "batch" prior: the batch's estimated mix, how sure, any fallback


def model_folders(store: Store, exp: Experiment) -> list[Path]:
    """Where the experiment's model files are: its folder, or one folder per cross-validation fold."""
    root = store.artifact_dir(exp.id)
    return [fold_dir(root, f) for f in range(exp.folds)] if exp.folds else [root]


def resolve_experiment(store: Store, model: str = "best", data_root: str | Path | None = None) -> Experiment:
    """`best` (see `core.store.database.best_rule`: chosen on validation, among models on `data_root`),
    an experiment id, or the newest finished model of that name."""
    models = [e for e in store.experiments("finished") if e.is_model]
    if model == "best":
        exp_id = best_of(models, data_root)
        if exp_id is None:
            hint = "train one with `python train.py suite`"
            if models and data_root is not None:
                roots = sorted({e.data_root for e in models})
                hint = f"models exist for other data ({', '.join(roots)}): pass --data or --model"
            raise ModelNotFound(f"no finished model{f' on {data_root}' if data_root else ''} in {store.path} ({hint})")
        return next(e for e in models if e.id == exp_id)
    match = [e for e in models if e.id == model] or [e for e in models if e.name == model]
    if not match:
        hint = "no finished model yet: train one with `python train.py suite`" if not models else \
            f"choose one of: {', '.join(sorted({e.name for e in models}))}"
        raise ModelNotFound(f"model {model!r} not found in {store.path} ({hint})")
    return match[0]


@dataclass(frozen=True)
class Member:
    """One experiment of what a counter serves: its models (one, or one per fold), the size its photos
    are decoded at, its calibration map and its weight in an ensemble."""

    predictors: Sequence[Predictor]
    image_size: int
    calibration: Calibration
    weight: float = 1.0

    def likelihoods(self, images: np.ndarray) -> np.ndarray:
        """The mean of its models' calibrated likelihoods for uint8 (N, S, S, 3) arrays at `image_size`."""
        return np.mean([self.calibration.likelihood(p(images)) for p in self.predictors], axis=0)


Photos = Mapping[int, np.ndarray]  # image size -> uint8 (N, S, S, 3) arrays of the same photos at that size


class BinCounter:
    """A loaded model (or ensemble) with calibrated probabilities under a stated prior (`prior_name`,
    one of `core.evaluation.priors.PRIORS`); `count` takes any photo the decoder accepts.

    It serves `members`: one experiment, or an ensemble's, whose weighted mean likelihood is mapped by
    `calibration` (no map for one experiment, whose member carries its own)."""

    def __init__(self, exp: Experiment, members: Sequence[Member], prior: str = DEFAULT_PRIOR,
                 precision: str = "fp32", engine: str = "torch", on_gpu: bool = False,
                 calibration: Calibration | None = None):
        if exp.num_classes is None or not members:
            raise ValueError(f"experiment {exp.id} has no class count or no model: not a counting model")
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r}: one of {', '.join(PRIORS)}")
        self.exp = exp
        self.exp_id, self.name = exp.id, exp.name
        self.num_classes: int = exp.num_classes
        self.members = list(members)
        self.sizes = tuple(sorted({m.image_size for m in self.members}))  # every size a photo is decoded at
        self.image_size: int = self.sizes[-1]  # the largest
        self.calibration = calibration or Calibration()
        self.prior_name = prior
        self.precision = precision  # what the network computes in: "bf16" or "fp32" ("float64": classical)
        self.engine = engine  # what runs it: "onnxruntime" or "torch" (CNN; "+"-joined if folds differ), "scikit-learn"
        self.on_gpu = on_gpu  # whether the network runs on a GPU, leaving every core to decoding
        self.batch_size = GPU_BATCH if on_gpu else CPU_BATCH  # photos scored at once by default
        self.workers = decode_workers(network_on_cpu=not on_gpu)  # decoding threads by default

    @property
    def served_by(self) -> str:
        """The precision and the engine counting, in words: "fp32, ONNX Runtime"."""
        return f"{self.precision}, {' + '.join(ENGINES.get(e, e) for e in self.engine.split('+'))}"

    def with_prior(self, prior: str) -> BinCounter:
        """The same loaded models, showing posteriors under another prior."""
        return BinCounter(self.exp, self.members, prior, self.precision, self.engine, self.on_gpu, self.calibration)

    def likelihoods(self, images: np.ndarray | Photos) -> np.ndarray:
        """Calibrated likelihoods (normalised per photo) for a batch of photos at each size of `sizes`
        (one uint8 (N, S, S, 3) array will do for a counter of one size)."""
        photos = images if isinstance(images, Mapping) else {self.image_size: images}
        mean = np.average([m.likelihoods(photos[m.image_size]) for m in self.members], axis=0,
                          weights=[m.weight for m in self.members])
        return self.calibration.likelihood(mean)

    def shown(self, likelihoods: np.ndarray) -> list[CountResult]:
        """What is shown for photos of these likelihoods, counted together: the posteriors under the
        stated prior (for "batch", the mix of these photos) and their most probable counts."""
        likelihoods = np.atleast_2d(likelihoods)
        batch = batch_mix(likelihoods, self.exp.open_top) if self.prior_name == "batch" else None
        prior = stated_prior(self.prior_name, self.num_classes, self.exp.open_top) if batch is None \
            else np.asarray(batch.mix)
        probs = with_prior(likelihoods, prior)
        counts, rounded, prior_list = decide(probs), probs.round(6), prior.round(6).tolist()
        return [CountResult(int(c), r.tolist(), float(e), float(r[c]), prior_list, batch)
                for c, r, e in zip(counts, rounded, expected_count(probs), strict=True)]

    def probabilities(self, images: np.ndarray | Photos) -> np.ndarray:
        """The probabilities shown for a batch of photos (as `likelihoods` takes them), counted together."""
        return np.array([r.probs for r in self.shown(self.likelihoods(images))])

    def count(self, source: ImageSource) -> CountResult:
        """Count one photo; raises `ImageError` for anything that is not a usable image."""
        return self.shown(self.likelihoods({s: a[None] for s, a in load_rgb_sizes(source, self.sizes).items()}))[0]

    def iter_likelihoods(self, sources: Iterable[ImageSource], batch_size: int | None = None,
                         workers: int | None = None) -> Iterator[np.ndarray | ImageError]:
        """Per photo of a stream, in order: its calibrated likelihoods, or the `ImageError` that stopped
        it; decoding threads (`core.data.images.decoded_batches`, `workers`, by default `self.workers`)
        prepare the next batch while the network scores this one, `batch_size` (by default
        `self.batch_size`) photos at a time."""
        batch_size = self.batch_size if batch_size is None else batch_size
        workers = self.workers if workers is None else workers
        for decoded in decoded_batches(sources, self.sizes, batch_size, workers):
            good = [d for d in decoded if not isinstance(d, ImageError)]
            scored = iter(self.likelihoods({s: np.stack([d[s] for d in good]) for s in self.sizes}) if good else ())
            yield from (d if isinstance(d, ImageError) else next(scored) for d in decoded)

    def _shown_in_place(self, items: Sequence[np.ndarray | ImageError]) -> list[CountResult | ImageError]:
        good = [x for x in items if isinstance(x, np.ndarray)]
        shown = iter(self.shown(np.stack(good)) if good else ())
        return [x if isinstance(x, ImageError) else next(shown) for x in items]

    def iter_counts(self, sources: Iterable[ImageSource], batch_size: int | None = None, workers: int | None = None,
                    progress: bool = False, total: int | None = None) -> Iterator[CountResult | ImageError]:
        """Count a stream of photos in order, one result per photo (a bad one yields its `ImageError`).
        Under a fixed prior results come batch by batch; under the "batch" prior (the mix of all the
        photos given) every photo is scored before the first result, since each answer depends on all."""
        scored = iter(tqdm(self.iter_likelihoods(sources, batch_size, workers), total=total, desc="counting",
                           unit="photo", disable=not progress))  # one iterator: each iter() of a tqdm restarts it
        if self.prior_name == "batch":
            yield from self._shown_in_place(list(scored))
            return
        while chunk := list(islice(scored, self.batch_size if batch_size is None else batch_size)):
            yield from self._shown_in_place(chunk)

    def count_batch(self, sources: Sequence[ImageSource], batch_size: int | None = None, progress: bool = False,
                    workers: int | None = None) -> list[CountResult | ImageError]:
        """Count many photos (together: a batch prior is their mix); a bad one yields its
        `ImageError` in place, the rest are counted."""
        return list(self.iter_counts(sources, batch_size, workers, progress, total=len(sources)))


def load_counter(model: str = "best", store: Store | None = None, data_root: str | Path | None = None,
                 prior: str = DEFAULT_PRIOR, precision: str | None = None, engine: str | None = None) -> BinCounter:
    """Load a finished experiment (or the best on `data_root`) for counting under `prior`. A CNN
    counts in `precision` ("bf16" or "fp32"), by default its device's
    (`core.cnn.runtime.counting_precision`: bf16 on CUDA, fp32 on the CPU unless asked), run by
    `engine` ("onnxruntime" or "torch"), by default the device's (`counting_engine`: ONNX Runtime
    for fp32 on the CPU); classical models in float64 with scikit-learn. A CNN that PyTorch runs on a
    GPU counts `GPU_BATCH` photos at once, decoded by a thread per core (`BinCounter.on_gpu`)."""
    store = store or Store()
    exp = resolve_experiment(store, model, data_root)
    if exp.family == "ensemble":
        loaded = [_load_member(store, _member(store, exp, member_id), weight, precision, engine)
                  for member_id, weight in exp.members.items()]
    else:
        loaded = [_load_member(store, exp, 1.0, precision, engine)]
    precisions = "+".join(sorted({p for _, p, _ in loaded}))
    engines = "+".join(sorted({e for _, _, used in loaded for e in used.split("+")}))
    on_gpu = torch.cuda.is_available() and engine != "onnxruntime" and engines == "torch"
    return BinCounter(exp, [m for m, _, _ in loaded], prior, precisions, engines, on_gpu,
                      calibration=exp.calibration if exp.family == "ensemble" else None)


def _member(store: Store, ensemble: Experiment, member_id: str) -> Experiment:
    try:
        member = store.experiment(member_id)
    except KeyError:
        member = None
    if member is None or not member.is_model:
        raise ModelNotFound(f"{ensemble.name} ({ensemble.id}) needs {member_id}, which is no longer a finished "
                            "model in the store: build the ensemble again (`python train.py ensemble`)")
    return member


def _load_member(store: Store, exp: Experiment, weight: float, precision: str | None,
                 engine: str | None) -> tuple[Member, str, str]:
    """One experiment's models as a `Member`, with the precision and engine they count in."""
    folders = model_folders(store, exp)
    if exp.image_size is None:
        raise ValueError(f"experiment {exp.id} has no image size: not a counting model")
    if exp.family != "cnn":
        predictors = [LOADERS[exp.family](folder, exp.artifact, exp.num_classes or 0) for folder in folders]
        return Member(predictors, exp.image_size, exp.calibration, weight), "float64", "scikit-learn"
    gpu = torch.cuda.is_available() and engine != "onnxruntime"  # where PyTorch counts, it counts on the GPU
    networks = [load_cnn(folder, exp.artifact, exp.num_classes or 0, batch_size=GPU_BATCH if gpu else CPU_BATCH,
                         precision=precision, engine=engine) for folder in folders]
    engines = "+".join(sorted({n.engine for n in networks}))  # both where a fold's graph failed to load (logged)
    return Member(networks, exp.image_size, exp.calibration, weight), networks[0].precision, engines


@dataclass(frozen=True)
class SourceScore:
    """A counter scored on the photos of one source of a folder (`core.data.sources`)."""

    photos: int
    figures: SplitFigures
    ece_by_prior: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"photos": self.photos, **self.figures.to_dict(), "ece_by_prior": self.ece_by_prior}


@dataclass(frozen=True)
class FolderScore:
    """A counter scored on a labelled folder (`evaluate_folder`)."""

    model: str  # experiment id
    scope: str  # "test split" (the model's own collection) or "all photos" (see `scope_of`)
    figures: SplitFigures  # of what the counter shows, under `prior`; the paper's task in `figures.paper_task`
    left_out_counts: int  # photos whose count the model cannot predict
    unreadable: int
    prior: str = DEFAULT_PRIOR  # the prior the figures' probabilities are under (`core.evaluation.priors`)
    ece_by_prior: dict[str, float] = field(default_factory=dict)  # `core.evaluation.metrics.ece_by_prior`
    by_source: dict[str, SourceScore] = field(default_factory=dict)  # `core.data.sources`
    batch: BatchMix | None = None  # under the "batch" prior: the mix the figures are under

    def to_dict(self) -> dict[str, Any]:
        """The JSON `train.py evaluate` prints: model, scope, prior (with the batch's estimated mix under
        the "batch" prior), the figures' keys, the ECE under each prior, the same per source, then what
        was left out."""
        return {"model": self.model, "scope": self.scope, "prior": self.prior,
                **({"batch_mix": self.batch.to_dict()} if self.batch is not None else {}), **self.figures.to_dict(),
                "ece_by_prior": self.ece_by_prior,
                "by_source": {name: score.to_dict() for name, score in self.by_source.items()},
                "left_out_counts": self.left_out_counts, "unreadable": self.unreadable}


def scope_of(exp: Experiment, table: pd.DataFrame, root: str | Path, store: Store) -> tuple[pd.DataFrame, str]:
    """The photos of `table` (a collection of `root`) that may score `exp`, and that scope in words.

    On the experiment's own collection only its test split (`"test split"`, from the split stored
    with the experiment), since the rest trained, calibrated or selected it; elsewhere every photo
    (`"all photos"`). Evaluation and the folder audit both score by this rule.
    """
    if not (exp.data_root and same_root(exp.data_root, root)):
        return table, "all photos"
    split = store.split(exp.id)
    if split.empty:
        raise ValueError(f"{root} is the collection {exp.name} was trained on, but its split was not stored "
                         "with it (trained by an older binsight): retrain it, or use other photos")
    return table[table["image_id"].isin(split.loc[split["split"] == "test", "image_id"])], "test split"


def evaluate_folder(counter: BinCounter, root: str | Path, store: Store | None = None,
                    progress: bool = True) -> FolderScore:
    """Score a counter on a labelled collection, with 95% bootstrap intervals, on the photos
    `scope_of` allows. Counts the model cannot predict are left out and counted. The figures are
    those of what the counter shows (`prior`), with the paper's task beside them
    (`SplitFigures.paper_task`), the ECE under each prior and all of it per source (`core.data.sources`).
    """
    store = store or Store()
    open_top = counter.exp.open_top
    collection = load_collection(root, max_count=counter.num_classes - 1 - int(open_top), open_top=open_top)
    table, scope = scope_of(counter.exp, collection.table, root, store)
    results = counter.count_batch(table["path"].tolist(), progress=progress)
    ok = [i for i, r in enumerate(results) if isinstance(r, CountResult)]
    truth = table["count"].to_numpy()[ok]
    if not ok:
        raise ValueError(f"no photo in {root} could be counted")
    counted = [r for r in results if isinstance(r, CountResult)]
    probs, shown = np.array([r.probs for r in counted]), np.array([r.count for r in counted])
    likelihood = probs / np.clip(np.array([r.prior for r in counted]), 1e-12, None)
    k = counter.num_classes

    def score(rows: np.ndarray) -> SourceScore:
        return SourceScore(int(rows.sum()), split_figures(truth[rows], probs[rows], k, open_top, shown[rows]),
                           ece_by_prior(likelihood[rows], truth[rows], k, open_top))

    sources = np.array(photo_sources(table["path"].to_numpy()[ok].tolist()))
    closed = truth < k - 1 if open_top else np.ones(len(truth), dtype=bool)
    by_source = {name: score(sources == name) for name in sorted(set(sources)) if (closed & (sources == name)).any()}
    overall = score(np.ones(len(truth), dtype=bool))
    return FolderScore(counter.exp_id, scope, overall.figures, collection.out_of_range,
                       len(collection.skipped) + len(results) - len(ok), counter.prior_name, overall.ece_by_prior,
                       by_source, counted[0].batch)
