"""Inventory reconciliation: compare each bin's photo with its recorded quantity.

The report ranks bins by the probability that they do NOT hold the recorded quantity, so the
people recounting bins start where a mismatch is most likely.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from core.data import load_collection, parse_count
from core.images import ImageError
from core.predict import BinCounter

MISMATCH_THRESHOLD = 0.5  # default: flag a bin when it more likely than not differs from its record
REPORT_COLUMNS = ["image", "recorded_quantity", "predicted_count", "expected_count", "confidence",
                  "p_match", "p_mismatch", "mismatch", "error"]


def read_records(source: str | Path | bytes) -> pd.DataFrame:
    """A CSV with columns `image,recorded_quantity` -> table; a clear ValueError otherwise."""
    try:
        frame = pd.read_csv(io.BytesIO(source) if isinstance(source, bytes) else source, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"not a readable CSV file: {err}") from err
    frame.columns = [c.strip() for c in frame.columns]
    missing = {"image", "recorded_quantity"} - set(frame.columns)
    if missing:
        raise ValueError(f"the CSV needs the columns image,recorded_quantity (missing: {', '.join(sorted(missing))})")
    bad = []
    quantities = []
    for line, value in enumerate(frame["recorded_quantity"], start=2):
        try:
            quantities.append(parse_count(value))
        except (ValueError, TypeError):
            bad.append(f"line {line}: {value!r}")
            quantities.append(None)
    if bad:
        raise ValueError(f"recorded_quantity must be a whole number >= 0 ({'; '.join(bad[:5])})")
    return pd.DataFrame({"image": frame["image"].str.strip(), "recorded_quantity": quantities})


def records_from_folder(root: str | Path, records_csv: str | Path | None = None) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Records and image paths from a folder: its CSV if given, else its own labels (ABID metadata,
    manifest or count folders) taken as the recorded quantity. Images are keyed by file name."""
    root = Path(root)
    if records_csv:
        records = read_records(records_csv)
        images = {name: root / name for name in records["image"]}
        return records, images
    table = load_collection(root, max_count=10**6).table
    names = [Path(p).name for p in table["path"]]
    return (pd.DataFrame({"image": names, "recorded_quantity": table["count"].to_numpy()}),
            dict(zip(names, map(Path, table["path"]))))


def is_mismatch(p_mismatch: float, threshold: float = MISMATCH_THRESHOLD) -> bool:
    """The one flagging rule, shared by the report, the upload page's verdict and its charts."""
    return p_mismatch >= threshold


def reconcile(counter: BinCounter, records: pd.DataFrame, images: Mapping[str, bytes | Path],
              threshold: float = MISMATCH_THRESHOLD, progress: bool = False) -> pd.DataFrame:
    """The variance report, riskiest bins first. A bin is flagged when P(mismatch) >= threshold.

    Bins whose photo is missing or unreadable, or whose recorded quantity is beyond what the
    model can count, are listed with an `error` instead of a guess.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    names = list(records["image"])
    present = [n for n in names if n in images and (not isinstance(images[n], Path) or images[n].is_file())]
    results = dict(zip(present, counter.count_batch([images[n] for n in present], progress=progress)))
    rows = []
    for name, recorded in zip(names, records["recorded_quantity"]):
        result = results.get(name, ImageError("photo not found"))
        row = dict.fromkeys(REPORT_COLUMNS)
        row.update(image=name, recorded_quantity=int(recorded), error="")
        if isinstance(result, ImageError):
            row["error"] = str(result)
        else:
            p_match = counter.p_count(result, int(recorded))
            row.update(predicted_count=result.count, expected_count=round(result.expected, 3),
                       confidence=round(result.confidence, 4), p_match=round(p_match, 4),
                       p_mismatch=round(1 - p_match, 4), mismatch=is_mismatch(1 - p_match, threshold))
            if recorded >= counter.num_classes:
                row["error"] = f"recorded quantity is above what the model counts (0..{counter.num_classes - 1})"
        rows.append(row)
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    return report.sort_values("p_mismatch", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def write_report(report: pd.DataFrame, out: str | Path) -> None:
    """CSV or JSON (records), chosen by the file suffix."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        report.to_json(out, orient="records", indent=2)
    else:
        report.to_csv(out, index=False)
