"""The recount pages through Streamlit's AppTest: the queue (record, reload, a second user), the
batches list (reopen without counting, delete), what the recounts say, who may write."""
from __future__ import annotations

import pytest
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from core.counting.service import BinCounter
from core.data.synthetic import bin_jpeg
from core.reconcile.batches import list_batches
from core.reconcile.review import history
from core.store.database import Store
from dashboard.access import LOCAL_SUFFIX, is_loopback, login_configured, writer
from tests.builders import build_recount_store, open_page


@pytest.fixture(scope="module")
def recount_store(tmp_path_factory):
    return build_recount_store(tmp_path_factory.mktemp("recount"))


@pytest.fixture
def batch(recount_store, tmp_path, monkeypatch):
    """A fresh copy of the store for each test (outcomes recorded in one test stay out of the next)."""
    import shutil

    root, batch_id, true = recount_store
    copy = tmp_path / "store"
    shutil.copytree(root, copy)
    monkeypatch.setenv("BINSIGHT_STORE", str(copy))
    return Store(copy), batch_id, true


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, at.exception[0].value
    return at


def current_bin(at: AppTest) -> str:
    return next(s for s in at.selectbox if s.label == "Bin").value


def record(at: AppTest, outcome: str, count: int | None = None, note: str = "", name: str | None = None) -> str:
    """Record an outcome for the bin the queue shows; the bin's name."""
    image = current_bin(at)
    if name is not None:
        at.text_input(key="q-name").input(name)
        rerun(at)
    at.radio(key=f"q-outcome-{image}").set_value(outcome)
    if count is not None:
        at.number_input(key=f"q-count-{image}").set_value(count)
    if note:
        at.text_input(key=f"q-note-{image}").input(note)
    next(b for b in at.button if b.label.startswith("Record")).click()
    rerun(at)
    return image


def test_the_queue_records_three_outcomes_that_a_reload_finds(batch):
    store, batch_id, true = batch
    at = open_page("queue")
    assert "0 of 12 done" in at.get("progress")[0].proto.text
    assert any(c.value.startswith("when it says") or "never said" in c.value for c in at.caption)  # per-count trust
    first = record(at, "recounted", true[current_bin(at)], note="top shelf")
    second = record(at, "confirmed")
    third = record(at, "unusable", note="taped shut")
    assert len({first, second, third}) == 3  # each outcome opens the next open bin
    reloaded = open_page("queue")  # a new session: what it shows comes from the store
    assert "3 of 12 done" in reloaded.get("progress")[0].proto.text
    options = next(s for s in reloaded.selectbox if s.label == "Bin").options
    assert any(first in o and f"recounted: {true[first]} items" in o for o in options)
    assert any(second in o and "record confirmed" in o for o in options)
    assert any(third in o and "photo unusable" in o for o in options)
    entries = history(store, "recount", batch_id)
    assert entries["image"].tolist() == [first, second, third]
    assert entries["note"].tolist() == ["top shelf", "", "taped shut"]
    assert all(who.endswith(LOCAL_SUFFIX) for who in entries["who"])
    assert set(entries["source"]) == {"dashboard"}


def test_a_second_user_recording_the_same_bin_keeps_both_entries_and_shows_the_later_one(batch):
    store, batch_id, _ = batch
    ann = open_page("queue")
    image = current_bin(ann)
    record(ann, "recounted", 2, name="ann")
    bob = open_page("queue")
    bob.selectbox(key=next(s.key for s in bob.selectbox if s.label == "Bin")).set_value(image)
    rerun(bob)
    record(bob, "recounted", 4, name="bob")
    entries = history(store, "recount", batch_id, image)
    assert entries["who"].tolist() == ["ann" + LOCAL_SUFFIX, "bob" + LOCAL_SUFFIX]
    assert entries["count"].tolist() == [2, 4]
    again = open_page("queue")
    again.selectbox(key=next(s.key for s in again.selectbox if s.label == "Bin")).set_value(image)
    rerun(again)
    now = [m.value for m in again.markdown if m.value.startswith("**Now:**")]
    assert now and "recounted: 4 items" in now[0] and "bob" in now[0]
    shown = again.dataframe[-1].value  # the bin's history, newest first
    assert shown["who"].tolist() == ["bob" + LOCAL_SUFFIX, "ann" + LOCAL_SUFFIX]


def test_a_batch_reopens_without_counting_again_and_can_be_deleted(batch, monkeypatch):
    store, batch_id, _ = batch

    def no_counting(*args, **kwargs):
        raise AssertionError("the batch was counted again")

    monkeypatch.setattr(BinCounter, "count_batch", no_counting)
    at = open_page("batches")
    assert at.dataframe[0].value["batch"].tolist() == [batch_id]
    report = at.dataframe[1].value
    assert len(report) == 12 and report["mismatch"].all()
    at.checkbox(key=f"b-sure-{batch_id}").check()
    rerun(at)
    at.button(key=f"b-delete-{batch_id}").click()
    rerun(at)
    assert list_batches(store) == []
    assert "No reconciliation batch" in at.info[0].value


def test_what_the_recounts_say_shows_the_figures_beside_what_the_model_expected(batch):
    store, batch_id, true = batch
    at = open_page("queue")
    for _ in range(4):
        record(at, "recounted", true[current_bin(at)])
    page = open_page("recount_results")
    table = page.dataframe[0].value
    assert table["bins"].tolist()[0] == 4  # every bin is flagged (a budget of all of them)
    assert table["model expected"].notna().all()
    assert "4 bins recounted" in " ".join(c.value for c in page.caption)


def test_the_reconcile_page_keeps_its_report_as_a_batch_with_the_prior_it_used(batch):
    store, _, _ = batch
    at = open_page("reconcile")
    at.slider(key="rec-prior").set_value(0.05)
    photos = {f"up-{k}.jpg": bin_jpeg(k, seed=700 + k) for k in range(3)}
    at.file_uploader(key="rec-csv").set_value(
        ("records.csv", b"image,recorded_quantity\nup-0.jpg,0\nup-1.jpg,3\nup-2.jpg,2\n", "text/csv"))
    at.file_uploader(key="rec-photos").set_value([(n, d, "image/jpeg") for n, d in photos.items()])
    rerun(at)
    rerun(at)  # a rerun keeps no second batch
    kept = list_batches(store)
    assert len(kept) == 2 and kept[0].prior_wrong == 0.05
    from core.reconcile.batches import batch_bins

    bins = batch_bins(store, kept[0].id)
    assert all((store.root / copy).read_bytes() == photos[image] for image, copy in zip(bins["image"],
                                                                                       bins["stored_copy"],
                                                                                       strict=True))


# ---- who may write --------------------------------------------------------------------------------
def test_without_a_login_only_loopback_may_write_and_a_login_names_the_writer():
    assert writer(False, None, "127.0.0.1", "ann").who == "ann" + LOCAL_SUFFIX
    refused = writer(False, None, "0.0.0.0", "ann")
    assert not refused.allowed and "recording is off" in refused.reason
    assert not writer(False, None, "", "ann").allowed  # no address: every interface
    assert not writer(True, {"is_logged_in": False}, "0.0.0.0").allowed
    assert writer(True, {"is_logged_in": True, "email": "ann@example.com"}, "0.0.0.0").who == "ann@example.com"
    assert login_configured({"auth": {"redirect_uri": "https://x/oauth2callback", "client_id": "c",
                                      "client_secret": "s", "server_metadata_url": "https://idp"}})
    assert not login_configured({}) and not login_configured({"auth": {"cookie_secret": "x"}})
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")


def test_the_shipped_config_binds_to_loopback():
    import tomllib

    from core.config import PROJECT_ROOT

    shipped = tomllib.loads((PROJECT_ROOT / ".streamlit" / "config.toml").read_text())
    assert shipped["server"]["address"] == "127.0.0.1"
    assert "--server.address $(ADDRESS)" in (PROJECT_ROOT / "Makefile").read_text()


def test_opened_to_the_network_without_a_login_the_queue_refuses_to_write(batch):
    store, batch_id, _ = batch
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    try:
        at = open_page("queue")
        submit = next(b for b in at.button if b.label.startswith("Record"))
        assert submit.disabled
        assert any("recording is off" in c.value for c in at.caption)
    finally:
        st_config.set_option("server.address", before)
    assert history(store, "recount", batch_id).empty
