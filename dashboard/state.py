"""What the pages read, cached: experiments and their curves from the store, collections, photos.

Store reads are keyed by the store's version (the SQLite file and its write-ahead log), so a page
re-renders from memory until training writes something (the version argument must not start
with an underscore: Streamlit leaves such arguments out of the cache key); experiment lists also expire after a few
seconds, because a run whose process died changes status without a write.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import ImageOps

from core.config import find_data_dir, store_dir
from core.data.collection import DataError, load_collection
from core.data.images import ImageError, open_image
from core.reconcile.inventory import AuditCurve
from core.store.database import NoStoreError, Store, best_of, best_rule
from core.store.database import data_in_use as store_data_in_use
from core.store.layout import database_files
from core.store.records import Experiment
from dashboard.counting import PhotoCount, count_photos
from dashboard.tables import is_scored, item_names

Version = tuple[tuple[int, int], ...]
THUMBNAIL_PX = 240


def store_root() -> str:
    return str(store_dir())


def version(root: str) -> Version:
    """Changes whenever the store is written (size and mtime of the database and its WAL)."""
    out = []
    for path in database_files(Path(root)):
        try:
            stat = path.stat()
            out.append((stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            out.append((0, 0))
    return tuple(out)


@st.cache_data(ttl=5, show_spinner=False, max_entries=8)
def _experiments(root: str, store_version: Version) -> list[Experiment]:
    try:
        return Store(root, create=False).experiments()
    except NoStoreError:
        return []  # no store yet: none is created just by looking


def experiments() -> list[Experiment]:
    """All experiments of the store, newest first."""
    root = store_root()
    return _experiments(root, version(root))


def finished() -> list[Experiment]:
    """Finished models with test metrics: what the model pickers offer."""
    return [e for e in experiments() if is_scored(e)]


def data_in_use() -> str | None:
    """`core.store.database.data_in_use` over the cached list: the data `best` is chosen on."""
    return store_data_in_use(finished())


def best_id() -> str | None:
    """`core.store.database.Store.best` on the data in use, from the cached list: chosen on validation."""
    return best_of(finished(), data_in_use())


def best_rule_text() -> str:
    return best_rule(data_in_use())


@st.cache_data(show_spinner=False, max_entries=64)
def _epochs(root: str, exp_id: str, store_version: Version) -> pd.DataFrame:
    return Store(root, create=False).epochs(exp_id)


def epochs(exp_id: str) -> pd.DataFrame:
    root = store_root()
    return _epochs(root, exp_id, version(root))


@st.cache_data(show_spinner=False, max_entries=64)
def _lr_curves(root: str, exp_id: str, store_version: Version) -> list[dict]:
    return Store(root, create=False).lr_curves(exp_id)


def lr_curves(exp_id: str) -> list[dict]:
    root = store_root()
    return _lr_curves(root, exp_id, version(root))


@st.cache_data(show_spinner=False, max_entries=32)
def _predictions(root: str, exp_id: str, store_version: Version) -> pd.DataFrame:
    return Store(root, create=False).predictions(exp_id)  # stored calibrated, as the counting service gives them


def predictions(exp_id: str) -> pd.DataFrame:
    root = store_root()
    return _predictions(root, exp_id, version(root))


def default_data_root() -> str | None:
    """The data of the best experiment, else of the newest one, else the default data folder."""
    exps = finished() or experiments()
    best = best_id()
    for exp in sorted(exps, key=lambda e: e.id != best):
        root = exp.data_root
        if root and Path(root).is_dir():
            return root
    found = find_data_dir()
    return str(found) if found and found.is_dir() else None


@st.cache_data(ttl=3600, show_spinner="Reading the photo collection…", max_entries=4)
def collection(data_root: str) -> pd.DataFrame | None:
    """image_id, path, count, items of a collection (read with `core.data.collection`); None if unreadable."""
    if not data_root:
        return None
    try:
        return load_collection(data_root).table
    except (DataError, OSError):
        return None


@st.cache_data(ttl=3600, show_spinner=False, max_entries=4)
def items_by_image(data_root: str) -> dict[str, list[str]]:
    """Item names per image id, where the collection's metadata names them."""
    table = collection(data_root)
    if table is None:
        return {}
    return {str(image_id): names for image_id, items in zip(table["image_id"], table["items"], strict=True)
            if (names := item_names(str(items)))}


@st.cache_data(show_spinner=False, max_entries=2000)
def thumbnail(path: str, width: int = THUMBNAIL_PX) -> np.ndarray | None:
    """A small upright copy of a photo, letterboxed to 4:3 so grids line up (None if unreadable)."""
    try:
        img = open_image(path, draft_size=width)
    except (ImageError, OSError):
        return None
    return np.asarray(ImageOps.pad(img, (width, width * 3 // 4), color=(255, 255, 255)))


@st.cache_data(ttl=3600, show_spinner=False, max_entries=4)
def sample_paths(data_root: str, per_count: int = 2, seed: int = 0) -> pd.DataFrame:
    """A few photos of each count from a collection, for the photo strip and the sample uploads."""
    table = collection(data_root)
    if table is None or table.empty:
        return pd.DataFrame(columns=["image_id", "path", "count"])
    picked = table.sample(frac=1.0, random_state=seed).groupby("count").head(per_count)
    return picked[["image_id", "path", "count"]].sort_values(["count", "image_id"]).reset_index(drop=True)


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def counter(exp_id: str, root: str):
    """The counting service for one experiment (`core.counting.service.load_counter`), kept in memory."""
    from core.counting.service import load_counter

    return load_counter(exp_id, Store(root, create=False))


@st.cache_resource(show_spinner="Unpacking the uploads…", max_entries=2)
def uploaded_photos(upload_key: tuple, _files: list[tuple[str, bytes]]) -> tuple[dict[str, bytes], list[str]]:
    """`dashboard.counting.photos_from_uploads`, once per set of uploads (keyed by their hashes, not
    the unpacked bytes; kept as a resource, so reruns neither unzip nor copy them again)."""
    from dashboard.counting import photos_from_uploads

    return photos_from_uploads(_files)


@st.cache_data(show_spinner=False, max_entries=8)
def variance_report(exp_id: str, root: str, records: pd.DataFrame, upload_key: tuple, _photos: dict[str, bytes],
                    threshold: float, budget: str | None, prior_wrong: float) -> pd.DataFrame:
    """`core.reconcile.inventory.reconcile` for uploaded photos (named by `upload_key`), kept so that other
    widget changes do not recount the batch."""
    from core.reconcile.inventory import RECONCILE_PRIOR, reconcile

    return reconcile(counter(exp_id, root).with_prior(RECONCILE_PRIOR), records, _photos, threshold, prior_wrong,
                     budget=budget)


@st.cache_data(show_spinner=False, max_entries=32)
def _audit_curve(root: str, exp_id: str, store_version: Version, error_rate: float) -> AuditCurve | None:
    from core.reconcile.inventory import audit_curve, reconcile_prior


    preds = _predictions(root, exp_id, store_version)
    if preds.empty:
        return None
    probs, true = np.array(preds["probs"].tolist()), preds["true_count"].to_numpy(dtype=int)
    return audit_curve(probs, true, reconcile_prior(Store(root, create=False).experiment(exp_id)), error_rate)


def audit_curve(exp_id: str, error_rate: float) -> AuditCurve | None:
    """`core.reconcile.inventory.audit_curve` on the experiment's stored, calibrated test predictions."""
    root = store_root()
    return _audit_curve(root, exp_id, version(root), error_rate)


@st.cache_data(show_spinner="Counting…", max_entries=16)
def photo_counts(exp_id: str, root: str, photos: list[tuple[str, bytes]], prior: str) -> list[PhotoCount]:
    """`dashboard.counting.count_photos` for uploads under `prior`, kept so that typing a recorded
    quantity does not recount."""
    return count_photos(counter(exp_id, root).with_prior(prior), photos)


# ---- reconciliation batches and their recounts ----------------------------------------------------
def _store_or_none(root: str) -> Store | None:
    """The store to read, or None where there is none yet (looking creates nothing)."""
    try:
        return Store(root, create=False)
    except NoStoreError:
        return None


@st.cache_data(ttl=5, show_spinner=False, max_entries=8)
def _batches(root: str, store_version: Version) -> list:
    from core.reconcile.batches import list_batches

    store = _store_or_none(root)
    return list_batches(store) if store else []


def batches() -> list:
    """Every reconciliation batch of the store (`core.reconcile.batches.Batch`), newest first."""
    root = store_root()
    return _batches(root, version(root))


@st.cache_data(show_spinner=False, max_entries=16)
def _batch_outcomes(root: str, batch_id: str, store_version: Version) -> pd.DataFrame:
    from core.reconcile.recounts import with_outcomes

    return with_outcomes(Store(root, create=False), batch_id)


def batch_outcomes(batch_id: str) -> pd.DataFrame:
    """A batch's bins with their current recount outcomes (`core.reconcile.recounts.with_outcomes`)."""
    root = store_root()
    return _batch_outcomes(root, batch_id, version(root))


@st.cache_data(show_spinner=False, max_entries=16)
def _trust(root: str, exp_id: str, store_version: Version) -> dict:
    from core.counting.trust import model_trust

    store = Store(root, create=False)
    try:
        return model_trust(store, store.experiment(exp_id))
    except KeyError:
        return {}


def trust(exp_id: str) -> dict:
    """Per-count trust of a model (`core.counting.trust.model_trust`); empty when the model is gone."""
    root = store_root()
    return _trust(root, exp_id, version(root))


@st.cache_data(ttl=5, show_spinner=False, max_entries=8)
def _recounted_per_batch(root: str, store_version: Version) -> dict[str, int]:
    from core.reconcile.review import reviewed_photos

    store = _store_or_none(root)
    return reviewed_photos(store, "recount") if store else {}


def recounted_per_batch() -> dict[str, int]:
    """Per batch, how many of its bins have an outcome."""
    root = store_root()
    return _recounted_per_batch(root, version(root))


@st.cache_data(show_spinner="Looking for suspect labels…", max_entries=8)
def _suspects(root: str, exp_id: str, store_version: Version) -> tuple[pd.DataFrame, str]:
    from core.reconcile.suspects import held_out_predictions, suspect_labels

    store = Store(root, create=False)
    held_out = held_out_predictions(store, store.experiment(exp_id))
    return suspect_labels(held_out.predictions), held_out.described


def suspects(exp_id: str) -> tuple[pd.DataFrame, str]:
    """`core.reconcile.suspects.suspect_labels` on the model's stored probabilities of the photos it
    never trained on, and where those come from, in words."""
    root = store_root()
    return _suspects(root, exp_id, version(root))


@st.cache_data(show_spinner="Fitting the learning curve…", max_entries=8)
def _learning_curve(root: str, exp_id: str, store_version: Version):
    from core.analysis.learning_curve import learning_curve

    store = Store(root, create=False)
    return learning_curve(store, store.experiment(exp_id))


def learning_curve(exp_id: str):
    """`core.analysis.learning_curve.learning_curve` of the recipe of `exp_id`, from the store's runs."""
    root = store_root()
    return _learning_curve(root, exp_id, version(root))


@st.cache_data(ttl=5, show_spinner=False, max_entries=8)
def _recounted_photos(root: str, store_version: Version) -> int:
    from core.reconcile.recount_labels import recounted_photos

    store = _store_or_none(root)
    return len(recounted_photos(store)) if store else 0


def recounted_photos() -> int:
    """How many photos people have recounted to a number so far (each photo once)."""
    root = store_root()
    return _recounted_photos(root, version(root))
