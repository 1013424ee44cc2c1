"""Every dashboard page through Streamlit's AppTest: an empty store, a store filled by real tiny
training runs, a run in progress, good and bad uploads."""
from __future__ import annotations

import base64
import io
import json
import shlex
import threading
import zipfile

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

import train
from core.cnn import train_cnn
from core.config import PROJECT_ROOT
from core.counting.service import load_counter
from core.data.synthetic import bin_jpeg
from core.evaluation.metrics import headline_text
from core.evaluation.priors import describe
from core.reconcile.inventory import PRIOR_WRONG, judge, read_records, reconcile
from core.store.database import Store
from dashboard import counting, tables, ui
from dashboard.pages import PAGES
from tests.builders import CNN_TINY, awkward_batch, open_page


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, at.exception[0].value
    return at


def _decode(node):
    """Plotly's JSON keeps numeric arrays as base64 typed arrays: {"dtype", "bdata", "shape"}."""
    if isinstance(node, dict) and "bdata" in node and "dtype" in node:
        array = np.frombuffer(base64.b64decode(node["bdata"]), dtype=node["dtype"])
        return array.reshape([int(n) for n in str(node["shape"]).split(",")]) if "shape" in node else array
    if isinstance(node, dict):
        return {k: _decode(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_decode(v) for v in node]
    return node


def charts(at: AppTest) -> list[go.Figure]:
    return [go.Figure(_decode(json.loads(el.proto.spec))) for el in at.get("plotly_chart")]


def zipped(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def store(trained_store, monkeypatch) -> Store:
    monkeypatch.setenv("BINSIGHT_STORE", str(trained_store))
    return Store(trained_store)


@pytest.fixture
def counter(store):
    return load_counter("best", store)


# ---- an empty store ------------------------------------------------------------------------
@pytest.mark.parametrize("page", [page.name for page in PAGES])
def test_empty_store_says_how_to_train(page, tmp_path, monkeypatch):
    monkeypatch.setenv("BINSIGHT_STORE", str(tmp_path / "store"))
    at = open_page(page)
    assert not at.error
    assert "python train.py " in at.code[0].value
    assert not (tmp_path / "store").exists()  # looking does not create a store


def test_the_train_commands_shown_are_real_commands():
    lr_page = (PROJECT_ROOT / "dashboard" / "views" / "lr_finder.py").read_text()
    lr_command = lr_page.split('st.code("')[1].split('"')[0]
    for line in [*ui.TRAIN_COMMANDS, lr_command, ui.RECONCILE_COMMAND]:
        words = shlex.split(line.split("#")[0])
        assert words[0].endswith("python") and words[1] == "train.py"
        train.build_parser().parse_args(words[2:])  # exits (fails the test) on an unknown command


# ---- pages over trained experiments --------------------------------------------------------
def test_overview_ranks_the_models_and_shows_the_data(store):
    at = open_page("overview")
    scored = [e for e in store.experiments() if tables.is_scored(e)]
    board = at.dataframe[0].value
    assert len(board) == len(scored)  # the LR sweep is no model
    ranked = board["selection (95% CI)"].map(lambda text: float(text.split()[0])).tolist()
    assert ranked == sorted(ranked, reverse=True)  # by the validation figure models are chosen on
    assert board["balanced accuracy (95% CI)"].str.match(r"^\d\.\d{3} \(\d\.\d{3}–\d\.\d{3}\)$").all()
    best = store.experiment(store.best())
    assert at.metric[0].label == "Best model" and at.metric[0].value == tables.labels(scored)[best.id]
    assert any("best = highest validation balanced accuracy" in c.value for c in at.caption)
    histogram = charts(at)[-1]
    assert list(histogram.data[0].y) == [6] * 6
    assert len(at.image[0].value) == 6  # one photo of each count
    assert "No training is running." in [c.value for c in at.caption]


def test_overview_shows_a_run_in_progress_with_its_curves(trained_store, tmp_path, monkeypatch):
    """A real training run, held after its first epoch while the page is rendered."""
    store = Store(tmp_path / "live")
    monkeypatch.setenv("BINSIGHT_STORE", str(store.root))
    first_epoch, release = threading.Event(), threading.Event()

    def hold(epoch, values):
        first_epoch.set()
        release.wait(timeout=120)

    overrides = {**CNN_TINY, "phases": [{"epochs": 2, "image_size": 32, "train_body": False, "lr": 1e-3}]}
    run = threading.Thread(target=train_cnn, args=(trained_store.parent / "data", "quick", store, overrides),
                           kwargs={"progress": False, "on_epoch": hold})
    run.start()
    try:
        assert first_epoch.wait(timeout=120)
        at = open_page("overview")
        assert any("1 epoch(s) so far" in m.value for m in at.markdown)
        loss = charts(at)[0]
        assert {t.name.split(" · ")[1] for t in loss.data} == {"train", "val"}
        assert len(loss.data[0].x) == 1
    finally:
        release.set()
        run.join(timeout=120)
    assert store.experiments()[0].status == "finished"


def test_overview_lists_a_crashed_run_with_its_error(trained_store, tmp_path, monkeypatch):
    store = Store(tmp_path / "crashed")
    monkeypatch.setenv("BINSIGHT_STORE", str(store.root))

    def crash(epoch, values):
        raise RuntimeError("disk full")

    overrides = {**CNN_TINY, "phases": [{"epochs": 2, "image_size": 32, "train_body": False, "lr": 1e-3}]}
    with pytest.raises(RuntimeError):
        train_cnn(trained_store.parent / "data", "quick", store, overrides, progress=False, on_epoch=crash)
    at = open_page("overview")
    assert "No finished experiment" in at.info[0].value  # nothing to rank yet: how to train
    others = at.dataframe[0].value
    assert others.loc[0, "status"] == "failed" and others.loc[0, "error"] == "RuntimeError: disk full"


def test_compare_puts_experiments_side_by_side(store):
    at = open_page("compare")
    assert at.multiselect(key="compare").value[0] == store.best()  # the best and the runner-up
    assert len(at.dataframe[0].value) == 2
    verdict = at.markdown[0].value
    assert "beats" in verdict or "within noise" in verdict
    answers = at.dataframe[1].value  # the paper's task beside the product's answer, per experiment
    picked = [store.experiment(i) for i in at.multiselect(key="compare").value]
    assert len(answers) == 4 and list(answers["answer"]).count("the paper's task (among 0..5)") == 2
    for exp in picked:
        label = tables.labels(picked)[exp.id]
        row = answers[(answers["experiment"] == label) & answers["answer"].str.startswith("the paper's")].iloc[0]
        assert row["accuracy (95% CI)"] == headline_text(exp.metrics.paper_task)[0]
        assert row["bins"] == exp.metrics.paper_task.n
    differences = at.dataframe[2].value
    assert list(differences["metric"]) == ["accuracy", "balanced accuracy", "rmse"]
    assert (differences["95% low"] <= differences["A minus B"]).all()
    assert (differences["A minus B"] <= differences["95% high"]).all()
    by_family = {e.family: e.id for e in store.experiments() if tables.is_scored(e)}
    chosen = [by_family["cnn"], by_family["classical"]]
    at.multiselect(key="compare").set_value(chosen)
    figs = charts(rerun(at))
    assert len(figs) == 4  # curves (of the CNN only), per-class bars, two confusion matrices
    assert {t.line.dash for t in figs[0].data} == {"solid", "dash"} and len(figs[0].data) == 2
    assert len(figs[1].data) == 2 and figs[1].layout.barmode == "group"
    at.segmented_control(key="compare-what").set_value("RMSE")
    rerun(at)
    assert charts(at)[1].layout.yaxis.title.text == "RMSE"
    at.multiselect(key="compare").set_value(chosen[:1])
    rerun(at)
    assert "Pick at least two experiments." in [i.value for i in at.info]


def test_per_class_table_is_the_experiments_test_metrics(store):
    at = open_page("per_class")
    exp = store.experiment(at.selectbox(key="per-class").value)
    table = at.dataframe[0].value
    expected = [np.nan if v is None else v for v in exp.metrics.per_class_accuracy]
    np.testing.assert_allclose(table["accuracy"].to_numpy(dtype=float), expected)
    assert table["test photos"].sum() == exp.metrics.n
    bars = charts(at)[0].data[0]
    assert bars.error_y.array is not None  # per-count 95% intervals as error bars
    calibration = exp.calibration  # calibrated when it was trained
    coverage = charts(at)[2].data[0]
    assert list(coverage.y) == pytest.approx(calibration.coverage_accuracy)


def test_confusion_cell_shows_its_photos(store):
    at = open_page("confusion")
    exp = store.experiment(at.selectbox(key="cm-exp").value)
    matrix = np.asarray(exp.metrics.confusion_matrix)
    heat = charts(at)[0].data[0]
    np.testing.assert_array_equal(np.asarray(heat.z), matrix)
    true, pred = map(int, np.unravel_index(matrix.argmax(), matrix.shape))
    at.selectbox(key="cm-true").set_value(true)
    at.selectbox(key="cm-pred").set_value(pred)
    rerun(at)
    assert at.subheader[0].value.startswith(f"{matrix[true, pred]} test photo(s) holding {true} item(s)")
    assert len(at.image) == min(matrix[true, pred], 12)
    at.segmented_control(key="cm-view").set_value("row-normalised")
    rerun(at)
    assert np.asarray(charts(at)[0].data[0].z).sum(axis=1)[true] == pytest.approx(1)


def test_lr_finder_overlays_the_sweeps_with_their_suggestions(store):
    at = open_page("lr_finder")
    chosen = at.multiselect(key="lr-exps").value
    assert set(chosen) == {e.id for e in store.experiments() if store.lr_curves(e.id)}
    curves = [c for i in chosen for c in store.lr_curves(i)]
    fig = charts(at)[0]
    assert fig.layout.xaxis.type == "log"
    assert len([t for t in fig.data if t.mode == "lines"]) == len(curves)
    suggested = at.dataframe[0].value["suggested learning rate"].tolist()
    assert suggested == pytest.approx([c["suggested"] for c in curves])


def test_misclassified_filters_by_count(store):
    at = open_page("misclassified")
    preds = store.predictions(at.selectbox(key="mis-exp").value)
    wrong = preds[preds["true_count"] != preds["pred_count"]]
    assert at.subheader[0].value == f"{len(wrong)} of {len(preds)} test photos counted wrong"
    true = int(wrong.loc[wrong["true_count"] > 0, "true_count"].mode()[0])  # a bin with items to name
    at.multiselect(key="mis-true").set_value([true])
    rerun(at)
    shown = (wrong["true_count"] == true).sum()
    assert at.subheader[0].value.startswith(f"{shown} of")
    assert len(at.image) == min(shown, 12)
    assert all(f"**true {true}**" in m.value for m in at.markdown if m.value.startswith("**true"))
    # item names come from the collection's metadata: "item 0".."item k-1" for a bin of k items
    items = [c.value for c in at.caption if c.value.startswith("Items: ")]
    assert items and all(c == "Items: " + ", ".join(f"item {j}" for j in range(true)) for c in items)


def test_upload_counts_a_photo_and_reports_a_bad_file(store, counter):
    at = open_page("upload")
    assert at.selectbox(key="up-model").value == store.best()
    good = bin_jpeg(3, seed=77)
    at.file_uploader(key="up-files").set_value([("bin.jpg", good, "image/jpeg"),
                                                ("broken.jpg", b"these bytes are no photo", "image/jpeg")])
    rerun(at)
    result = counter.count(good)
    assert "broken.jpg" in at.error[0].value and "not an image" in at.error[0].value
    assert [m.value for m in at.metric if m.label == "Items counted"] == [str(result.count)]
    probs = charts(at)[0].data[0].y
    assert list(probs) == pytest.approx(result.probs)

    recorded = int(np.argmin(result.probs))  # the least likely quantity
    at.number_input[0].set_value(recorded)
    rerun(at)
    _, p_mismatch, _ = judge(counter, result, recorded)
    alerts = at.warning if p_mismatch >= counting.MISMATCH_THRESHOLD else at.success
    assert f"{p_mismatch:.0%}" in alerts[0].value


@pytest.mark.parametrize("prior", ["uniform", "natural", "batch"])
def test_upload_shows_the_most_probable_count_of_the_bars_it_draws(store, counter, prior):
    """Issue #18: an animated GIF, a grayscale JPEG and a 16-bit PNG showed a count and a
    confidence that were not the highest bar. Each photo's count and confidence are its bars' top."""
    files, _, _ = awkward_batch()
    odd = [f for f in files if f[0] in ("animated.gif", "grey.jpg", "sixteen-bit.png")]
    at = open_page("upload")
    at.radio(key="up-prior").set_value(prior)
    at.file_uploader(key="up-files").set_value(odd)
    rerun(at)
    assert any(c.value.startswith(f"Probabilities under {describe(prior)}") for c in at.caption)
    fallback = "Every count alike: 3 photos are too few to estimate their mix (at least 50)."
    assert any(c.value == fallback for c in at.caption) == (prior == "batch")  # the batch prior says how sure
    counted = [m.value for m in at.metric if m.label == "Items counted"]
    confidence = [m.value for m in at.metric if m.label == "Confidence"]
    bars = [np.asarray(fig.data[0].y, dtype=float) for fig in charts(at)]
    assert len(counted) == len(confidence) == len(bars) == 3
    expected = counter.with_prior(prior).count_batch([data for _, data, _ in odd])
    for shown, sure, probs, result in zip(counted, confidence, bars, expected, strict=True):
        assert int(shown) == int(np.argmax(probs)) == result.count
        assert sure == f"{probs.max():.0%}"
        assert list(probs) == pytest.approx(result.probs)


def test_upload_only_a_bad_file_keeps_the_page_serving(store):
    at = open_page("upload")
    at.file_uploader(key="up-files").set_value(("notes.png", b"\x89PNG but truncated", "image/png"))
    rerun(at)
    assert "notes.png" in at.error[0].value
    assert not at.metric
    at.file_uploader(key="up-files").set_value(("bin.jpg", bin_jpeg(2, seed=5), "image/jpeg"))
    rerun(at)
    assert not at.error and at.metric[0].label == "Items counted"


def test_upload_a_sample_photo(store):
    at = open_page("upload")
    samples = at.selectbox(key="up-sample").options
    at.selectbox(key="up-sample").set_value(samples[1])
    rerun(at)
    assert at.metric[0].label == "Items counted" and at.image[0].captions == [samples[1]]


def test_reconcile_report_from_a_csv_and_a_zip(store, counter):
    at = open_page("reconcile")
    photos = {f"bin-{k}.jpg": bin_jpeg(k, seed=100 + k) for k in range(4)}
    csv = "image,recorded_quantity\nbin-0.jpg,0\nbin-1.jpg,5\nbin-2.jpg,2\nbin-3.jpg,3\nmissing.jpg,1\n"
    at.file_uploader(key="rec-csv").set_value(("records.csv", csv.encode(), "text/csv"))
    at.file_uploader(key="rec-photos").set_value([("day1.zip", zipped({f"bins/{n}": d for n, d in photos.items()}),
                                                   "application/zip")])
    rerun(at)
    report = at.dataframe[0].value
    expected = reconcile(counter, read_records(csv.encode()), photos)
    pd.testing.assert_frame_equal(report.reset_index(drop=True), expected.drop(columns=["probs"]), check_dtype=False)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Bins given"] == "5" and metrics["Checked"] == "4" and metrics["Errors"] == "1"
    assert metrics["Flagged"] == str(int(expected["mismatch"].sum()))
    assert at.download_button  # the report can be downloaded


def test_reconcile_bad_inputs_are_explained(store):
    at = open_page("reconcile")
    at.file_uploader(key="rec-csv").set_value(("records.csv", b"bin,qty\na.jpg,1\n", "text/csv"))
    at.file_uploader(key="rec-photos").set_value([("a.jpg", bin_jpeg(1, seed=1), "image/jpeg")])
    rerun(at)
    assert "image,recorded_quantity" in at.error[0].value
    at.file_uploader(key="rec-csv").set_value(("records.csv", b"image,recorded_quantity\na.jpg,1\n", "text/csv"))
    at.file_uploader(key="rec-photos").set_value([("a.jpg", bin_jpeg(1, seed=1), "image/jpeg"),
                                                  ("old.zip", b"PK not really a zip", "application/zip")])
    rerun(at)
    assert "old.zip: not a readable zip file" in at.warning[0].value
    assert len(at.dataframe[0].value) == 1


# ---- the upload handling, directly ---------------------------------------------------------
def test_photos_from_uploads_unpacks_zips_by_path_and_name():
    archive = zipped({"day/a.jpg": b"A", "day/sub/b.JPG": b"B", "x/c.jpg": b"C1", "y/c.jpg": b"C2",
                      "__MACOSX/day/._a.jpg": b"junk", "notes.txt": b"text"})
    photos, problems = counting.photos_from_uploads([("loose.png", b"L"), ("batch.zip", archive)])
    assert photos["loose.png"] == b"L"
    assert photos["a.jpg"] == photos["day/a.jpg"] == b"A" and photos["b.JPG"] == b"B"
    assert "c.jpg" not in photos and photos["y/c.jpg"] == b"C2"  # an ambiguous bare name is not guessed
    assert not any("MACOSX" in k or k.endswith(".txt") for k in photos)
    assert problems == ["batch.zip: 2 photos are named c.jpg; use their paths in the CSV."]
    _, problems = counting.photos_from_uploads([("empty.zip", zipped({"readme.md": b"no photos"}))])
    assert problems == ["empty.zip: no photos inside."]


def test_verdict_flags_a_likely_mismatch(counter):
    result = counter.count(bin_jpeg(2, seed=3))
    likely = counting.verdict(counter, result, result.count)
    unlikely = counting.verdict(counter, result, int(np.argmin(result.probs)))
    assert likely.p_mismatch == pytest.approx(judge(counter, result, result.count)[1])
    assert unlikely.p_mismatch > likely.p_mismatch
    assert unlikely.mismatch == (unlikely.p_mismatch >= counting.MISMATCH_THRESHOLD)
    beyond = counting.verdict(counter, result, 99)  # beyond what the model counts: not checked, not flagged
    assert not beyond.mismatch and beyond.p_mismatch is None and "above what the model counts" in beyond.text


# ---- reconciliation settings, caps on uploads, awkward batches -----------------------------------
def test_upload_a_batch_of_awkward_files_counts_every_photo_and_explains_every_failure(store, counter):
    files, good, bad = awkward_batch()
    at = open_page("upload")
    at.file_uploader(key="up-files").set_value(files)
    rerun(at)
    counted = [m.value for m in at.metric if m.label == "Items counted"]
    assert len(counted) == len(good)
    assert [c for c in at.image[0].captions] and {cap for im in at.image for cap in im.captions} == good
    errors = [e.value for e in at.error]
    assert len(errors) == len(bad) and all(any(e.startswith(name) for e in errors) for name in bad)
    expected = {name: counter.count(data).count for name, data, _ in files if name in good}
    assert sorted(map(int, counted)) == sorted(expected.values())


def test_preview_is_the_decoded_8_bit_rgb_photo():
    from PIL import Image

    sixteen = io.BytesIO()
    Image.fromarray(np.full((1200, 900), 40000, dtype=np.uint16)).save(sixteen, "PNG")
    shown = counting.preview(sixteen.getvalue())
    assert shown.mode == "RGB" and max(shown.size) == counting.PREVIEW_PX
    assert np.asarray(shown).dtype == np.uint8 and abs(int(np.asarray(shown)[0, 0, 0]) - 40000 * 255 // 65535) <= 1


def test_upload_caps_hold_across_all_files_together():
    photo = bin_jpeg(1, seed=1)
    small_zip = zipped({f"bins/{k}.jpg": photo for k in range(3)})
    photos, problems = counting.photos_from_uploads([("a.zip", small_zip), ("b.zip", small_zip), ("c.zip", small_zip)],
                                                    max_photos=7)
    assert len([k for k in photos if k.startswith("bins/")]) == 3 + 0  # b.zip repeats a.zip's names
    assert not [p for p in problems if p.startswith(("a.zip", "b.zip")) and "cap" in p]
    photos, problems = counting.photos_from_uploads([("a.zip", small_zip), ("b.zip", zipped({f"x/{k}.jpg": photo
                                                                                             for k in range(5)}))],
                                                    max_photos=7)
    assert "x/0.jpg" not in photos and "bins/0.jpg" in photos
    assert problems[-1].startswith("b.zip: skipped") and "at most 7 photos" in problems[-1]
    bomb = io.BytesIO()  # 3 KB compressed, 60 MB unpacked, in three small zips
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.png", b"\0" * 20_000_000)
    uploads = [(f"part{k}.zip", bomb.getvalue()) for k in range(3)]
    assert len(bomb.getvalue()) < 100_000
    photos, problems = counting.photos_from_uploads(uploads, max_bytes=50_000_000)
    assert sum(map(len, photos.values())) <= 50_000_000 * 2  # (a name and its bare-name alias share bytes)
    assert [p.split(":")[0] for p in problems] == ["part2.zip"] and "50 MB once unpacked" in problems[0]
    _, problems = counting.photos_from_uploads([("loose.jpg", photo)], max_bytes=10)
    assert problems[0].startswith("loose.jpg: skipped")


def test_a_zip_that_lies_about_its_sizes_is_refused():
    good = zipped({"a.jpg": b"x" * 1000})
    lying = good.replace((1000).to_bytes(4, "little"), (10).to_bytes(4, "little"))  # local + central headers
    photos, problems = counting.photos_from_uploads([("lying.zip", lying)])
    assert "a.jpg" not in photos and "not a readable zip file" in problems[0]


def test_reconcile_page_unzips_once_shows_totals_and_takes_a_budget(store, counter, monkeypatch):
    calls = []
    real = counting.photos_from_uploads
    monkeypatch.setattr(counting, "photos_from_uploads", lambda files: calls.append(1) or real(files))
    at = open_page("reconcile")
    photos = {f"bin-{k}.jpg": bin_jpeg(k, seed=300 + k) for k in range(6)}
    csv = "image,recorded_quantity\n" + "".join(f"bin-{k}.jpg,{(k + 2) % 6}\n" for k in range(6)) + \
        "bin-0.jpg,2.5\nbin-5.jpg,9\n"
    at.file_uploader(key="rec-csv").set_value(("records.csv", csv.encode(), "text/csv"))
    at.file_uploader(key="rec-photos").set_value([("day.zip", zipped(photos), "application/zip")])
    rerun(at)
    metrics = {m.label: m.value for m in at.metric}
    given = (metrics["Bins given"], metrics["Checked"], metrics["Not checkable"], metrics["Errors"])
    assert given == ("8", "6", "1", "1")
    assert any(f"prior share of wrong records {PRIOR_WRONG:.0%}" in c.value for c in at.caption)
    at.radio(key="rec-mode").set_value("an audit budget")
    rerun(at)
    at.text_input(key="rec-budget").set_value("2")
    rerun(at)
    report = at.dataframe[0].value
    assert report["mismatch"].sum() == 2 and report["mismatch"].iloc[:2].all()
    assert {m.label: m.value for m in at.metric}["Flagged"] == "2"
    assert len(calls) == 1  # unpacked once for all these reruns
    at.text_input(key="rec-budget").set_value("lots")
    rerun(at)
    assert "audit budget" in at.error[0].value


@pytest.mark.parametrize("page, key", [("per_class", "pc-audit"), ("reconcile", None)])
def test_audit_value_curve_from_the_stored_test_predictions(store, page, key):
    at = open_page(page)
    if key is None:  # the reconcile page shows it once a batch is given
        at.file_uploader(key="rec-csv").set_value(("records.csv", b"image,recorded_quantity\na.jpg,1\n", "text/csv"))
        at.file_uploader(key="rec-photos").set_value([("a.jpg", bin_jpeg(1, seed=1), "image/jpeg")])
        rerun(at)
        key = "rec-audit"
    exp_id = at.selectbox(key="per-class" if page == "per_class" else "rec-model").value
    predictions = store.predictions(exp_id)
    curve = charts(at)[-1]
    assert [t.name for t in curve.data][:2] == ["random order", "riskiest first"]
    assert len(curve.data[1].x) == len(predictions) + 1 and curve.data[1].y[-1] == 1
    assert "test photos" in next(c.value for c in at.caption if c.value.startswith("Measured on the model's"))
    table = at.dataframe[-1].value
    assert list(table["recount"]) == ["10%", "20%", "30%", "50%"]
    assert at.slider(key=f"{key}-rate").value == 0.2
