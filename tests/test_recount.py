"""The recount loop: batches kept in the store, outcomes recorded append-only, adjustments out,
recounts in (every bad row refused with its reason), the figures recounts give, a backup taken
while others write, and one whole cycle on real sample photos."""
from __future__ import annotations

import csv
import shutil
import sqlite3
import threading
import time

import numpy as np
import pandas as pd
import pytest

from core.config import SHARED_SAMPLE
from core.counting.trust import count_trust, trust_line
from core.reconcile.batches import (
    append_bins,
    batch_bins,
    batch_report,
    delete_batch,
    done_bins,
    finish_batch,
    get_batch,
    list_batches,
    open_batch,
)
from core.reconcile.inventory import REPORT_COLUMNS, simulate_errors
from core.reconcile.recounts import adjustments, batch_summary, import_recounts, queue, summary_table, with_outcomes
from core.reconcile.review import Review, ReviewError, history, latest, record_review, record_reviews
from core.store.database import Store
from tests.builders import CLASSICAL_TINY, requires_sample


def cli(capsys, *args: str) -> tuple[int, str]:
    """`train.py ARGS` in this process: (exit status, what it printed on stdout)."""
    import train

    capsys.readouterr()
    try:
        train.main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().out

SETTINGS = {"prior_wrong": 0.2, "threshold": 0.5, "budget": None, "rule": "", "num_classes": 4, "open_top": False,
            "class_prior": [0.25] * 4}


def report_rows(n: int, start: int = 0, seed: int = 0) -> pd.DataFrame:
    """`n` report rows as `core.reconcile.inventory.reconcile` gives them (4 classes), bins start..start+n-1."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4), size=n)
    p = rng.random(n)
    return pd.DataFrame({
        "image": [f"bin-{start + i:03d}.jpg" for i in range(n)], "recorded_quantity": rng.integers(0, 4, n),
        "predicted_count": probs.argmax(axis=1), "expected_count": probs @ np.arange(4),
        "confidence": probs.max(axis=1), "p_recorded": rng.random(n), "p_mismatch": p, "mismatch": p >= 0.5,
        "note": "", "error": "", "probs": list(probs.round(4).tolist()),
    }, columns=REPORT_COLUMNS)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def test_a_batch_is_appended_in_chunks_reports_its_done_bins_and_reads_back_as_its_report(store):
    batch = open_batch(store, model="m1", model_name="tiny", settings={**SETTINGS, "budget": 5})
    whole = report_rows(30)
    assert append_bins(store, batch, whole.iloc[:10]) == 10
    assert done_bins(store, batch) == set(whole["image"][:10])
    assert append_bins(store, batch, whole.iloc[5:30]) == 20  # a resumed run hands 5 stored bins again: kept once
    totals = finish_batch(store, batch)
    assert totals.to_dict() == {"given": 30, "checked": 30, "flagged": 5, "not_checkable": 0, "errors": 0}
    back = batch_report(store, batch)
    assert list(back.columns) == REPORT_COLUMNS
    assert back["p_mismatch"].tolist() == sorted(whole["p_mismatch"], reverse=True)
    assert back["mismatch"].tolist() == [True] * 5 + [False] * 25  # the budget flags exactly the 5 riskiest
    assert np.allclose(np.array(back["probs"].tolist()),
                       np.array(whole.set_index("image").loc[back["image"], "probs"].tolist()))
    assert get_batch(store, batch).totals == totals and [b.id for b in list_batches(store)] == [batch]
    record_review(store, Review("recount", batch, "bin-000.jpg", "confirmed", "ann"))
    delete_batch(store, batch)
    assert list_batches(store) == [] and batch_bins(store, batch).empty
    assert len(history(store, "recount", batch)) == 1  # people's outcomes stay in the log


def test_outcomes_are_append_only_and_the_latest_one_counts(store):
    batch = open_batch(store, model="m1", model_name="tiny", settings=SETTINGS)
    append_bins(store, batch, report_rows(4))
    record_review(store, Review("recount", batch, "bin-000.jpg", "recounted", "ann@example.com", 2, note="first"))
    record_review(store, Review("recount", batch, "bin-000.jpg", "recounted", "bob@example.com", 3))
    record_review(store, Review("recount", batch, "bin-001.jpg", "unusable", "ann@example.com", note="taped shut"))
    entries = history(store, "recount", batch, "bin-000.jpg")
    assert entries["who"].tolist() == ["ann@example.com", "bob@example.com"]  # both kept, in order
    assert entries["count"].tolist() == [2, 3] and entries["note"].tolist() == ["first", ""]
    now = latest(store, "recount", batch).set_index("image")
    assert now.loc["bin-000.jpg", "count"] == 3 and now.loc["bin-000.jpg", "entries"] == 2
    assert now.loc["bin-001.jpg", "outcome"] == "unusable"
    for bad, why in [(Review("recount", batch, "no-such.jpg", "confirmed", "ann"), "no bin"),
                     (Review("recount", batch, "bin-002.jpg", "recounted", "ann", -1), "whole number"),
                     (Review("recount", batch, "bin-002.jpg", "recounted", "ann", None), "whole number"),
                     (Review("recount", batch, "bin-002.jpg", "confirmed", " "), "who recorded"),
                     (Review("recount", batch, "bin-002.jpg", "maybe", "ann"), "unknown outcome")]:
        with pytest.raises(ReviewError, match=why):
            record_review(store, bad)
    assert len(history(store, "recount", batch)) == 3  # refused outcomes leave nothing behind


def write_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_import_refuses_each_bad_row_with_its_reason_and_records_every_good_one(store, tmp_path, capsys):
    batch = open_batch(store, model="m1", model_name="tiny", settings=SETTINGS)
    append_bins(store, batch, report_rows(6))
    rows = [{"batch": batch, "image": "bin-000.jpg", "recounted": "3", "note": "shelf 4", "who": "ann"},
            {"batch": batch, "image": "bin-001.jpg", "recounted": "0", "note": "", "who": ""},
            {"batch": batch, "image": "bin-000.jpg", "recounted": "2", "note": "", "who": "bob"},  # duplicate
            {"batch": batch, "image": "bin-099.jpg", "recounted": "1", "note": "", "who": ""},  # unknown bin
            {"batch": "no-such-batch", "image": "bin-002.jpg", "recounted": "1", "note": "", "who": ""},
            {"batch": batch, "image": "bin-003.jpg", "recounted": "-2", "note": "", "who": ""},
            {"batch": batch, "image": "bin-004.jpg", "recounted": "2.5", "note": "", "who": ""},
            {"batch": batch, "image": "bin-005.jpg", "recounted": "four", "note": "", "who": ""},
            {"batch": batch, "image": "bin-002.jpg", "recounted": "5", "note": "", "who": ""}]
    write_csv(tmp_path / "recounts.csv", rows)
    code, out = cli(capsys, "recount", "import", str(tmp_path / "recounts.csv"), "--who", "cli-user",
                    "--store", str(store.root))
    assert code == 1  # some rows were refused: says so in its exit status
    refused = [line for line in out.splitlines() if "refused" in line and "line" in line]
    assert [line.split(":")[0] for line in refused] == [f"recounts.csv line {n}" for n in (4, 5, 6, 7, 8, 9)]
    for line, reason in zip(refused, ["duplicate row", "unknown bin", "unknown batch", "negative count",
                                      "not a whole number", "not a number"], strict=True):
        assert reason in line, line
    assert "3 recounts recorded, 6 rows refused" in out
    now = latest(store, "recount", batch).set_index("image")
    assert now["count"].to_dict() == {"bin-000.jpg": 3, "bin-001.jpg": 0, "bin-002.jpg": 5}
    assert now.loc["bin-000.jpg", "who"] == "ann" and now.loc["bin-001.jpg", "who"] == "cli-user"
    assert now.loc["bin-000.jpg", "note"] == "shelf 4"
    with pytest.raises(ValueError, match="columns batch,image,recounted"):
        import_recounts(store, b"batch,image\nx,y\n", who="ann")


def test_the_backup_is_a_consistent_copy_taken_while_outcomes_are_written(store, tmp_path, capsys):
    batch = open_batch(store, model="m1", model_name="tiny", settings=SETTINGS)
    append_bins(store, batch, report_rows(50))
    stop = threading.Event()

    def keep_writing() -> None:
        k = 0
        while not stop.is_set():
            record_review(store, Review("recount", batch, f"bin-{k % 50:03d}.jpg", "recounted", "ann", k % 4))
            k += 1

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        time.sleep(0.5)  # outcomes are being written
        code, out = cli(capsys, "store", "backup", str(tmp_path / "copy.sqlite"), "--store", str(store.root))
    finally:
        stop.set()
        writer.join()
    assert code == 0
    assert "restore" in out
    with sqlite3.connect(tmp_path / "copy.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = [r[0] for r in db.execute("SELECT id FROM reviews ORDER BY id")]
    assert ids == list(range(1, len(ids) + 1))  # a prefix of the log: every entry before the copy, none torn
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copyfile(tmp_path / "copy.sqlite", restored / "experiments.sqlite")
    assert len(history(Store(restored), "recount", batch)) == len(ids)  # the README's restore: copy it back


def test_queue_orders_riskiest_or_least_sure_first(store):
    batch = open_batch(store, model="m1", model_name="tiny", settings=SETTINGS)
    append_bins(store, batch, report_rows(20))
    bins = batch_bins(store, batch)
    risky = queue(bins, "riskiest first")
    assert risky["image"].tolist() == bins.loc[bins["flagged"], "image"].tolist()
    assert risky["p_mismatch"].is_monotonic_decreasing
    unsure = queue(bins, "least sure first", size=5)
    entropies = [-(np.asarray(p) * np.log(np.clip(p, 1e-12, 1))).sum() for p in bins["probs"]]
    assert np.allclose(sorted(entropies, reverse=True)[:5], unsure["entropy"])


def test_the_recount_figures_match_the_outcomes_with_intervals(store):
    batch = open_batch(store, model="m1", model_name="tiny", settings=SETTINGS)
    rows = report_rows(40, seed=3)
    append_bins(store, batch, rows)
    finish_batch(store, batch)
    truth = {}
    for k, rec in enumerate(rows.itertuples(index=False)):
        if k % 2 == 0:  # half the bins recounted: every fourth one to a different count
            true = (rec.recorded_quantity + 1) % 4 if k % 4 == 0 else rec.recorded_quantity
            truth[rec.image] = true
            outcome = ("recounted", true) if true != rec.recorded_quantity else ("confirmed", None)
            record_review(store, Review("recount", batch, rec.image, outcome[0], "ann", outcome[1]))
    summary = batch_summary(store, batch)
    done = rows[rows["image"].isin(truth)]
    wrong = np.array([truth[i] != r for i, r in zip(done["image"], done["recorded_quantity"], strict=True)])
    flagged = done["mismatch"].to_numpy()
    assert summary.recounted == 20
    assert summary.precision.value == pytest.approx(wrong[flagged].mean())
    assert summary.precision.expected == pytest.approx(done["p_mismatch"][flagged].mean())
    assert summary.wrong_share.value == pytest.approx(wrong.mean()) and summary.wrong_share.n == 20
    right = [truth[i] == c for i, c in zip(done["image"], done["predicted_count"], strict=True)]
    assert summary.accuracy.value == pytest.approx(np.mean(right))
    low, high = summary.wrong_share.interval
    assert 0 <= low < summary.wrong_share.value < high <= 1
    assert summary.suggested_prior is None  # fewer than 30 recounted bins: no suggestion yet
    assert list(summary_table(summary)["figure"]) == [summary.precision.name, summary.wrong_share.name,
                                                      summary.accuracy.name]
    exported = adjustments(store, batch)
    assert sorted(exported["image"]) == sorted(i for i, t in truth.items()
                                               if t != rows.set_index("image").loc[i, "recorded_quantity"])
    assert (exported["adjustment"] == exported["recounted"] - exported["recorded"]).all()


def test_enough_recounts_suggest_the_prior_they_imply(store):
    """Bins whose records are wrong as often as a prior of 5% predicts: the suggestion comes back near 5%."""
    rng = np.random.default_rng(7)
    n = 400
    probs = rng.dirichlet(np.ones(4) * 0.6, size=n)
    true = np.array([rng.choice(4, p=p) for p in probs])  # counts drawn from the model's own probabilities
    recorded, _ = simulate_errors(true, 4, 0.05, seed=1)
    rows = report_rows(n)
    rows["probs"] = list(probs.tolist())
    rows["recorded_quantity"] = recorded
    batch = open_batch(store, model="m1", model_name="tiny", settings=SETTINGS)
    append_bins(store, batch, rows)
    record_reviews(store, [Review("recount", batch, image, "recounted", "ann", int(count))
                           for image, count in zip(rows["image"], true, strict=True)])
    value, low, high = batch_summary(store, batch).suggested_prior
    assert low < value < high
    assert 0.01 < value < 0.15, value


def test_per_count_trust_reads_from_the_scored_photos():
    predictions = pd.DataFrame({"pred_count": [3, 3, 3, 1], "true_count": [3, 2, 3, 1]})
    trust = count_trust(predictions, "test")
    assert trust[3].right == 2 and trust[3].n == 3
    assert trust_line(trust, 3) == "when it says 3, it is right 67% of the time (n = 3, test photos)"
    assert "never said 5" in trust_line(trust, 5)


@requires_sample
def test_one_whole_cycle_on_real_sample_photos(tmp_path, capsys):
    """Reconcile 40 real bins with a fifth of their records moved by 1 or 2; record their true counts
    in the queue's bins; the adjustments exported are the simulated errors among the recounted bins,
    and the realised precision is the one the simulation gives."""
    from core.classical import ClassicalConfig, train_classical

    manifest = pd.read_csv(SHARED_SAMPLE / "manifest.csv")
    small = manifest[(manifest["count"] <= 5) & (manifest["width"] <= 300)]
    picked = small.sample(frac=1.0, random_state=0).groupby("count").head(15)
    train_part = picked.groupby("count").head(8)
    batch_part = picked.drop(train_part.index).sample(frac=1.0, random_state=1).head(40)
    data, bins = tmp_path / "train", tmp_path / "bins"
    for folder, part in ((data, train_part), (bins, batch_part)):
        (folder / "images").mkdir(parents=True)
        for file in part["file"]:
            shutil.copyfile(SHARED_SAMPLE / file, folder / file)
        part[["file", "count"]].assign(metadata="").to_csv(folder / "manifest.csv", index=False)
    store = Store(tmp_path / "store")
    train_classical(data, ClassicalConfig("hog", "svc", grid={"C": [1]}, **CLASSICAL_TINY), store, n_jobs=1,
                    progress=False)

    true = dict(zip(batch_part["file"], batch_part["count"], strict=True))
    recorded, wrong = simulate_errors(list(true.values()), 6, 0.2, seed=4)
    wrong = dict(zip(true, wrong, strict=True))
    records = dict(zip(true, recorded, strict=True))
    pd.DataFrame({"image": list(records), "recorded_quantity": list(records.values())}).to_csv(
        tmp_path / "records.csv", index=False)
    code, out = cli(capsys, "reconcile", "--data", str(bins), "--records", str(tmp_path / "records.csv"),
                    "--budget", "25%", "--out", str(tmp_path / "report.csv"), "--store", str(store.root))
    assert code == 0, out
    batch = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("batch: "))

    work = queue(with_outcomes(store, batch), "riskiest first")
    assert len(work) == 10  # a quarter of the 40 bins
    rows = [{"batch": batch, "image": image, "recounted": str(true[image])} for image in work["image"]]
    write_csv(tmp_path / "counted.csv", rows)
    code, out = cli(capsys, "recount", "import", str(tmp_path / "counted.csv"), "--who", "counter",
                    "--store", str(store.root))
    assert code == 0, out
    code, out = cli(capsys, "recount", "export", "--batch", batch, "--out", str(tmp_path / "adjustments.csv"),
                    "--store", str(store.root))
    assert code == 0, out
    exported = pd.read_csv(tmp_path / "adjustments.csv")
    assert list(exported.columns) == ["batch", "image", "recorded", "recounted", "adjustment", "who", "when"]
    simulated = {image: true[image] - records[image] for image in work["image"] if wrong[image]}
    assert dict(zip(exported["image"], exported["adjustment"], strict=True)) == simulated
    assert (exported["who"] == "counter").all() and (exported["batch"] == batch).all()
    summary = batch_summary(store, batch)
    assert summary.precision.n == 10
    assert summary.precision.value == pytest.approx(np.mean([wrong[i] for i in work["image"]]))
