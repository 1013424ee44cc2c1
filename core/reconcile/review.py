"""One review mechanism: a person looks at a photo and records what they found.

Both the discrepancy queue of a reconciliation batch (kind "recount": was the record right?) and
the review of suspect labels (kind "label": is the collection's label right?) write here. An entry
is never changed or deleted: a correction is a new entry, so the history of a photo reads back
and the latest entry is its current outcome. Each entry is written in one transaction that
also checks its subject (the batch and its bin) exists, so a crash loses at most the entry being
written, and an entry can never point at nothing.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import pandas as pd

from core.store.database import Store

# kind -> outcome -> whether it carries a count
OUTCOMES: dict[str, dict[str, bool]] = {
    "recount": {"recounted": True, "confirmed": False, "unusable": False},
    "label": {"label_right": False, "relabel": True, "exclude": False},
}
OUTCOME_WORDS = {"recounted": "recounted", "confirmed": "record confirmed", "unusable": "photo unusable",
                 "label_right": "label right", "relabel": "relabel", "exclude": "exclude"}
HISTORY_COLUMNS = ["id", "kind", "subject", "image", "outcome", "count", "who", "at", "note", "source"]


class ReviewError(ValueError):
    """An outcome that cannot be recorded (unknown bin, bad count, no writer); the message says why."""


@dataclass(frozen=True)
class Review:
    """What one person recorded about one photo of a subject (a batch id, or a collection)."""

    kind: str  # "recount" or "label"
    subject: str
    image: str  # the photo's key inside its subject (a batch's bin `image`)
    outcome: str  # one of OUTCOMES[kind]
    who: str
    count: int | None = None  # the count a person found (recounted / relabel)
    note: str = ""
    source: str = ""  # where it was recorded: "dashboard", "import FILE", ...
    at: float | None = None  # seconds since the epoch; now when None

    def checked(self) -> Review:
        """The review, or a `ReviewError` saying what is wrong with it."""
        outcomes = OUTCOMES.get(self.kind)
        if outcomes is None:
            raise ReviewError(f"unknown kind of review {self.kind!r}; one of {sorted(OUTCOMES)}")
        if self.outcome not in outcomes:
            raise ReviewError(f"unknown outcome {self.outcome!r}; one of {sorted(outcomes)}")
        if not self.who.strip():
            raise ReviewError("an outcome needs the name of who recorded it")
        if outcomes[self.outcome]:
            if isinstance(self.count, bool) or not isinstance(self.count, Integral) or self.count < 0:
                raise ReviewError(f"{OUTCOME_WORDS[self.outcome]} needs a whole number of items >= 0, "
                                  f"got {self.count!r}")
        elif self.count is not None:
            raise ReviewError(f"{OUTCOME_WORDS[self.outcome]} takes no count")
        return self


def _subject_exists(db: sqlite3.Connection, review: Review) -> bool:
    if review.kind == "recount":
        return db.execute("SELECT 1 FROM batch_bins WHERE batch = ? AND image = ?",
                          (review.subject, review.image)).fetchone() is not None
    return True  # a label review's subject is a collection the store does not hold


def record_reviews(store: Store, reviews: Sequence[Review]) -> list[int]:
    """Append the reviews in one transaction (all or none); their entry ids. Touches the batch of
    recount reviews (`updated_at`) in the same transaction."""
    checked = [r.checked() for r in reviews]
    now = time.time()
    ids = []
    with store.transaction() as db:
        for review in checked:
            if not _subject_exists(db, review):
                raise ReviewError(f"no bin {review.image!r} in batch {review.subject!r}")
            cursor = db.execute(
                "INSERT INTO reviews (kind, subject, image, outcome, count, who, at, note, source)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (review.kind, review.subject, review.image, review.outcome,
                 None if review.count is None else int(review.count), review.who.strip(),
                 review.at if review.at is not None else now, review.note.strip(), review.source))
            ids.append(int(cursor.lastrowid or 0))
            if review.kind == "recount":
                db.execute("UPDATE batches SET updated_at = ? WHERE id = ?", (now, review.subject))
    return ids


def record_review(store: Store, review: Review) -> int:
    """Append one review; its entry id."""
    return record_reviews(store, [review])[0]


def history(store: Store, kind: str, subject: str | None = None, image: str | None = None) -> pd.DataFrame:
    """Every entry (oldest first) of a kind, optionally of one subject and one photo."""
    where, args = ["kind = ?"], [kind]
    if subject is not None:
        where.append("subject = ?")
        args.append(subject)
    if image is not None:
        where.append("image = ?")
        args.append(image)
    with store.reading() as db:
        rows = db.execute(f"SELECT {', '.join(HISTORY_COLUMNS)} FROM reviews WHERE {' AND '.join(where)}"
                          " ORDER BY id", args).fetchall()
    frame = pd.DataFrame([dict(r) for r in rows], columns=HISTORY_COLUMNS)
    frame["count"] = frame["count"].astype("Int64")
    return frame


def latest(store: Store, kind: str, subject: str | None = None) -> pd.DataFrame:
    """The current outcome of each reviewed photo: its latest entry (by entry id), with `entries`,
    how many entries it has."""
    entries = history(store, kind, subject)
    if entries.empty:
        return entries.assign(entries=pd.Series(dtype=int))
    sizes = entries.groupby(["subject", "image"]).size().rename("entries")
    last = entries.groupby(["subject", "image"], sort=False).tail(1)
    return last.join(sizes, on=["subject", "image"]).reset_index(drop=True)


def found_count(outcome: str, count: int | None, recorded: int | None) -> int | None:
    """The count a person established: a recount's number, or the record itself when confirmed; None
    where nothing was counted (photo unusable, exclude)."""
    if outcome in ("recounted", "relabel"):
        return count
    if outcome == "confirmed":
        return recorded
    return None


def describe(outcome: str, count: int | None) -> str:
    """An outcome in words: "recounted: 3 items", "record confirmed"."""
    words = OUTCOME_WORDS.get(outcome, outcome)
    return f"{words}: {count} items" if count is not None and outcome == "recounted" else \
        f"{words} to {count}" if count is not None else words


def reviewed_photos(store: Store, kind: str) -> dict[str, int]:
    """Per subject, how many of its photos have at least one entry."""
    with store.reading() as db:
        return {r[0]: r[1] for r in db.execute("SELECT subject, COUNT(DISTINCT image) FROM reviews WHERE kind = ?"
                                               " GROUP BY subject", (kind,))}
