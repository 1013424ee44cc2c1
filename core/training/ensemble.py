"""`best` as a mix of finished runs: ensemble selection (Caruana, Niculescu-Mizil, Crew and Ksikes
2004, "Ensemble selection from libraries of models"), the paper's third future-work item.

The library is every finished single model on one data folder (not a cross-validated run, which
has no validation split, nor another ensemble) that scored the same validation photos with the
same classes. Starting from none, each round adds, with replacement, the model whose addition
gives the mean of the members' calibrated likelihoods the highest validation balanced accuracy
(`best`'s figure; ties go to the lower log-loss), so a model chosen twice weighs twice. Selection
stops when a round improves nothing, or after `MAX_ROUNDS`. Averaging makes probabilities less
sure (a mean of two runs had an ECE of 0.071 against 0.037 for one, issue #27), so the mean is
recalibrated on validation (`core.evaluation.calibration.fit_calibration`): the ensemble's
likelihood is that map applied to the members' weighted mean.

The ensemble's validation figures are cross-fitted: for each half of the validation photos, the
members are chosen and the map fitted on the other half. The figure `best` ranks it by was thus
not judged on the photos that chose it, and an ensemble that only fits validation noise loses to
its best member. Its test figures are reported once, like any run's.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from core.evaluation.calibration import Calibration, decide, fit_calibration, summary_on_test
from core.evaluation.metrics import count_report, split_figures
from core.evaluation.priors import PRIORS, stated_prior, uniform_prior, with_prior
from core.store.database import Store, config_key, same_root, selection_score
from core.store.records import Experiment

FAMILY = "ensemble"
VERSION = 1  # part of every ensemble's key: bump when a change alters what a library selects
MAX_ROUNDS = 20
MEMBER_FAMILIES = ("cnn", "classical")
EPS = 1e-7


@dataclass(frozen=True)
class HeldOut:
    """Runs' calibrated likelihoods on the photos of one split all of them scored, by image id."""

    image_ids: np.ndarray
    paths: np.ndarray
    counts: np.ndarray
    likelihoods: np.ndarray  # (runs, photos, classes)

    def mean(self, weights: Sequence[float] | None = None) -> np.ndarray:
        return np.average(self.likelihoods, axis=0, weights=weights)


def likelihoods(probs: np.ndarray, exp: Experiment) -> np.ndarray:
    """A run's stored probabilities with the prior they were shown under taken out: its calibrated
    likelihoods, normalised per photo (the probabilities themselves for the default, uniform prior)."""
    shown = exp.calibration.shown_prior
    if shown == "uniform":
        return probs
    if shown in PRIORS and shown != "batch":
        prior = stated_prior(shown, exp.num_classes or probs.shape[1], exp.open_top)
    else:  # "fit" (an older binsight's runs), or a batch's mix no longer known: the fitting photos' mix
        prior = np.asarray(exp.calibration.fit_prior or uniform_prior(probs.shape[1]))
    return with_prior(probs, 1 / np.clip(prior, EPS, None))


def held_out(store: Store, experiments: Sequence[Experiment], split: str) -> HeldOut:
    """The stored predictions of `split` of each run, as likelihoods, on the photos all of them scored,
    sorted by image id (bootstrap intervals depend on the order)."""
    frames = []
    for exp in experiments:
        frame = store.predictions(exp.id, split)
        if frame.empty:
            raise ValueError(f"{exp.name} ({exp.id}) stored no {split!r} predictions"
                             + (" (a cross-validated run: use 'oof')" if split == "val" and exp.folds else "")
                             + (" (a single run: use 'val')" if split == "oof" and not exp.folds else ""))
        frames.append(frame.set_index("image_id"))
    shared = frames[0].index
    for frame in frames[1:]:
        shared = shared.intersection(frame.index)
    if shared.empty:
        raise ValueError("the runs share no photo on this split")
    shared = shared.sort_values()
    first = frames[0].loc[shared]
    stacked = np.stack([likelihoods(np.stack(frame.loc[shared, "probs"].to_list()), exp)
                        for frame, exp in zip(frames, experiments, strict=True)])
    return HeldOut(shared.to_numpy(), first["path"].to_numpy(), first["true_count"].to_numpy(dtype=int), stacked)


def library(store: Store, data_root: str | Path) -> list[Experiment]:
    """The runs an ensemble on `data_root` may choose from (see the module docstring): those that
    scored the validation photos and classes of the best single run among them."""
    runs = [e for e in store.experiments("finished") if e.is_model and e.family in MEMBER_FAMILIES
            and not e.folds and same_root(e.data_root, data_root) and selection_score(e) is not None]
    if not runs:
        return []
    top = max(runs, key=lambda e: selection_score(e) or 0.0)
    photos = {e.id: frozenset(store.split(e.id).query("split == 'val'")["image_id"]) for e in runs}
    return [e for e in runs if photos[e.id] == photos[top.id] and photos[e.id]
            and (e.num_classes, e.open_top) == (top.num_classes, top.open_top)]


def _score(likelihood: np.ndarray, counts: np.ndarray, num_classes: int, open_top: bool) -> tuple[float, float]:
    """(balanced accuracy of the shown answer on bins of 0..K-2 items, or all bins of a closed model;
    log-loss), as `best` and `split_figures` count them."""
    closed = counts < num_classes - 1 if open_top else np.ones(len(counts), dtype=bool)
    balanced = count_report(counts[closed], decide(likelihood)[closed], num_classes).balanced_accuracy or 0.0
    loss = -np.log(np.clip(likelihood[np.arange(len(counts)), counts], EPS, None)).mean()
    return float(balanced), float(loss)


def select(stack: np.ndarray, counts: np.ndarray, num_classes: int, open_top: bool,
           max_rounds: int = MAX_ROUNDS) -> Counter[int]:
    """Greedy forward selection with replacement over `stack` (runs, photos, classes): how many times
    each run (by index) was chosen."""
    chosen: Counter[int] = Counter()
    total = np.zeros(stack.shape[1:])
    best = (-1.0, -np.inf)  # (balanced accuracy, minus log-loss): higher is better
    for _ in range(max_rounds):
        n = sum(chosen.values()) + 1
        scores = [_score((total + run) / n, counts, num_classes, open_top) for run in stack]
        keyed = [(balanced, -loss) for balanced, loss in scores]
        pick = max(range(len(stack)), key=lambda i: keyed[i])
        if keyed[pick] <= best:
            break
        best, total = keyed[pick], total + stack[pick]
        chosen[pick] += 1
    return chosen


@dataclass(frozen=True)
class Mix:
    """Members (index -> times chosen) and the map fitted to their weighted mean."""

    members: Counter[int]
    calibration: Calibration

    def apply(self, stack: np.ndarray) -> np.ndarray:
        """The mix's likelihoods for a stack of the library's likelihoods."""
        return self.calibration.likelihood(weighted_mean(stack, self.members))


def weighted_mean(stack: np.ndarray, members: Counter[int]) -> np.ndarray:
    """The mean of the chosen runs' likelihoods in `stack`, each weighing as often as it was chosen."""
    indices = sorted(members)
    return np.average(stack[indices], axis=0, weights=[members[i] for i in indices])


def fit_mix(stack: np.ndarray, counts: np.ndarray, num_classes: int, open_top: bool,
            max_rounds: int = MAX_ROUNDS) -> Mix:
    members = select(stack, counts, num_classes, open_top, max_rounds)
    return Mix(members, fit_calibration(weighted_mean(stack, members), counts))


def cross_fitted(stack: np.ndarray, counts: np.ndarray, num_classes: int, open_top: bool,
                 max_rounds: int = MAX_ROUNDS, seed: int = 0) -> np.ndarray:
    """Each half's likelihoods under the mix chosen and calibrated on the other half (stratified by
    count; a count with a single photo is stratified with the rest). Too few photos to halve: the mix
    chosen on all of them, in sample."""
    labels = np.where(np.bincount(counts)[counts] >= 2, counts, -1)
    if len(counts) < 4 or np.bincount(labels + 1).min() < 2:
        return fit_mix(stack, counts, num_classes, open_top, max_rounds).apply(stack)
    out = np.empty(stack.shape[1:])
    for fit_idx, apply_idx in StratifiedKFold(2, shuffle=True, random_state=seed).split(counts, labels):
        mix = fit_mix(stack[:, fit_idx], counts[fit_idx], num_classes, open_top, max_rounds)
        out[apply_idx] = mix.apply(stack[:, apply_idx])
    return out


def build_ensemble(store: Store, data_root: str | Path, max_rounds: int = MAX_ROUNDS) -> str:
    """Choose an ensemble from the library on `data_root`, record it and its figures in the store as
    one finished model (family "ensemble"), and return its experiment id. The same library chooses
    the same members: that ensemble is returned, not recorded again. Raises ValueError when fewer
    than two runs can be mixed, or when the mix chosen is a single run (which is then `best` as it is)."""
    data_root = str(Path(data_root).resolve())
    runs = library(store, data_root)
    if len(runs) < 2:
        raise ValueError(f"an ensemble needs at least two finished single models on {data_root} that scored the "
                         f"same validation photos; found {len(runs)}: train more with `python train.py cnn` "
                         "or `python train.py classical`")
    val = held_out(store, runs, "val")
    mix = fit_mix(val.likelihoods, val.counts, runs[0].num_classes or val.likelihoods.shape[2], runs[0].open_top,
                  max_rounds)
    if len(mix.members) == 1:
        (only,) = mix.members
        raise ValueError(f"no mix beats {runs[only].name} ({runs[only].id}) alone on validation: it stays `best`")
    return record_ensemble(store, runs, val, mix, max_rounds)


def record_ensemble(store: Store, runs: Sequence[Experiment], val: HeldOut, mix: Mix,
                    max_rounds: int = MAX_ROUNDS) -> str:
    """Record `mix` of `runs` (whose validation likelihoods are `val`) as one finished model: its
    cross-fitted validation figures, its test figures and both splits' predictions; returns its id
    (that of the same ensemble already recorded, if there is one)."""
    k, open_top = runs[0].num_classes or val.likelihoods.shape[2], runs[0].open_top
    members = [runs[i] for i in sorted(mix.members)]
    weights = {runs[i].id: mix.members[i] for i in sorted(mix.members)}
    params = {"members": weights, "max_rounds": max_rounds}
    dataset = runs[0].dataset
    found = store.find_finished(config_key(FAMILY, FAMILY, params, dataset, VERSION))
    if found:
        return found
    test = held_out(store, members, "test")
    member_mix = Mix(Counter(dict(enumerate(weights.values()))), mix.calibration)
    val_shown = cross_fitted(val.likelihoods, val.counts, k, open_top, max_rounds)
    test_shown = member_mix.apply(test.likelihoods)  # under the uniform prior: the likelihoods shown as they are
    calibration = summary_on_test(test.mean(list(weights.values())), test_shown, test.counts, mix.calibration)
    sizes = [e.image_size for e in members if e.image_size]
    exp_id = store.start(FAMILY, FAMILY, FAMILY, params, dataset, code_version=VERSION, data_root=runs[0].data_root,
                         device="cpu", weights=", ".join(sorted({e.weights for e in members if e.weights})),
                         image_size=max(sizes) if sizes else None, num_classes=k, open_top=open_top,
                         members=weights)
    with store.running(exp_id):
        for name, part, shown in (("val", val, val_shown), ("test", test, test_shown)):
            store.log_predictions(exp_id, part.image_ids.tolist(), part.paths.tolist(), part.counts.tolist(), shown,
                                  split=name, pred_counts=decide(shown))
        store.log_split(exp_id, *_split_of(store, members[0]))
        store.finish(exp_id, split_figures(test.counts, test_shown, k, open_top, decide(test_shown)),
                     val_metrics=split_figures(val.counts, val_shown, k, open_top, decide(val_shown)),
                     calibration=calibration.to_dict(), folds=0, split_counts=members[0].split_counts,
                     train_seconds=sum(e.train_seconds or 0.0 for e in members), preset=FAMILY,
                     recipe_notes=member_line(weights, {e.id: run_name(e) for e in members}))
    return exp_id


def _split_of(store: Store, exp: Experiment) -> tuple[list[str], list[str]]:
    split = store.split(exp.id)
    return split["image_id"].tolist(), split["split"].tolist()


def run_name(exp: Experiment) -> str:
    """A run's name, with the part of the training split it trained on where that was not all of it:
    "quick-frozen (natural-mix photos, 1/2)"."""
    source = {"natural": "natural-mix photos", "originals": "originals"}.get(exp.params.get("train_source", ""))
    share = exp.params.get("train_share")
    part = ", ".join(p for p in (source, f"1/{round(1 / share)}" if share and (1 / share).is_integer()
                                 else f"{share:g}" if share else None) if p)
    return f"{exp.name} ({part})" if part else exp.name


def member_line(weights: dict[str, int], names: dict[str, str]) -> str:
    """The members in words: "quick-frozen x2 + hog-svm" (a name the store no longer has: its id)."""
    return " + ".join(f"{names.get(i, i)}{f' x{w}' if w > 1 else ''}" for i, w in weights.items())

