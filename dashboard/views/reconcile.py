"""Reconcile a batch: recorded quantities and photos in, a variance report out."""
from pathlib import PurePosixPath

import streamlit as st

from core.reconcile import read_records

from dashboard import counting, figures, state, ui

st.title("Reconcile a batch of bins")
st.caption("Upload the recorded quantities and the photos of the bins: the report lists the bins most likely "
           "to hold a different quantity first, so recounts start there.")
exps = ui.finished_or_stop()
exp = ui.pick_experiment(exps, key="rec-model", label="Model (the best one is preselected)")

left, right = st.columns(2)
with left:
    records_file = st.file_uploader("Recorded quantities: a CSV with columns image,recorded_quantity",
                                    type=["csv"], key="rec-csv")
    st.download_button("Example CSV", "image,recorded_quantity\nbin-001.jpg,3\nbin-002.jpg,0\n",
                       file_name="recorded_quantities.csv", mime="text/csv")
with right:
    photo_files = st.file_uploader("Bin photos, or a .zip of them", type=[*counting.IMAGE_TYPES, "zip"],
                                   accept_multiple_files=True, key="rec-photos")
threshold = st.slider("Flag a bin when the probability of a mismatch is at least", 0.05, 0.95,
                      counting.MISMATCH_THRESHOLD, 0.05, key="rec-threshold")

if records_file is None or not photo_files:
    st.info("Upload both the CSV and the photos to get the report.")
    st.stop()

try:
    records = read_records(records_file.getvalue())
except ValueError as err:
    st.error(f"{records_file.name}: {err}")
    st.stop()
photos, problems = counting.photos_from_uploads([(f.name, f.getvalue()) for f in photo_files])
for problem in problems:
    st.warning(problem)
if records.empty:
    st.error(f"{records_file.name} lists no bins.")
    st.stop()

ui.counter_or_stop(exp)  # says so on the page if the model cannot be loaded
with st.spinner(f"Counting {len(records)} bins…"):
    report = state.variance_report(exp["id"], state.store_root(), records, photos, threshold)

flagged = int(report["mismatch"].fillna(False).astype(bool).sum())
errors = int((report["error"] != "").sum())
c1, c2, c3 = st.columns(3)
c1.metric("Bins checked", len(report))
c2.metric("Probable mismatches", flagged, help=f"probability of a mismatch at least {threshold:.0%}")
c3.metric("Problems", errors, help="missing or unreadable photos, quantities beyond what the model counts")
unlisted = sorted({PurePosixPath(p).name for p in photos} - {PurePosixPath(p).name for p in records["image"]})
if unlisted:
    st.caption(f"{len(unlisted)} uploaded photo(s) are not in the CSV and were not checked: {', '.join(unlisted[:10])}")

st.plotly_chart(figures.mismatch_bars(report, threshold), key="rec-bars")
st.dataframe(report, hide_index=True, column_config={
    "p_mismatch": st.column_config.ProgressColumn("probability of a mismatch", min_value=0.0, max_value=1.0,
                                                  format="percent"),
    "p_match": st.column_config.NumberColumn("probability of a match", format="percent"),
    "confidence": st.column_config.NumberColumn(format="percent"),
    "mismatch": st.column_config.CheckboxColumn("flagged"),
})
st.download_button("Download the report (CSV)", report.to_csv(index=False), file_name="variance_report.csv",
                   mime="text/csv", type="primary")
