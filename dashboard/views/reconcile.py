"""Reconcile a batch: recorded quantities and photos in, a variance report out."""
from pathlib import PurePosixPath

import streamlit as st

from core.counting.trust import trust_line
from core.evaluation.priors import describe
from core.reconcile.batches import batch_settings
from core.reconcile.inventory import (
    MISMATCH_THRESHOLD,
    PRIOR_WRONG,
    RECONCILE_PRIOR,
    budget_size,
    flag_rule,
    read_records,
    report_totals,
    totals_line,
)
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
mode = st.radio("Which bins to flag", ["by probability", "an audit budget"], horizontal=True, key="rec-mode")
threshold, budget = MISMATCH_THRESHOLD, None
if mode == "by probability":
    threshold = st.slider("Flag a bin when the probability of a mismatch is at least", 0.05, 0.95,
                          MISMATCH_THRESHOLD, 0.05, key="rec-threshold")
else:
    budget = st.text_input("Recount the riskiest … bins (a number, or a share such as 10%)", "10%", key="rec-budget")
prior_wrong = st.slider("Share of records you expect to be wrong, before any photo is seen", 0.01, 0.5,
                        PRIOR_WRONG, 0.01, key="rec-prior", format="%.2f",
                        help="Your stock's own rate: one record in fifty wrong is 0.02. \"What the recounts say\" "
                             "suggests one from your recounts. The batch keeps the value used.")
st.caption(f"The probability of a mismatch weighs each photo against how often records are wrong: "
           f"{prior_wrong:.0%} of records are assumed wrong before a photo is seen. The photos' probabilities "
           f"(and the counts shown) are under {describe(RECONCILE_PRIOR)}, the prior reconciliation judges against.")

if records_file is None or not photo_files:
    st.info("Upload both the CSV and the photos to get the report.")
    st.stop()

try:
    records = read_records(records_file.getvalue())
    if budget is not None:
        budget_size(budget, 0)  # a clear message for a budget that is not one
except ValueError as err:
    st.error(f"{records_file.name if budget is None else 'Audit budget'}: {err}")
    st.stop()
uploads = [(f.name, f.getvalue()) for f in photo_files]
key = counting.upload_key(uploads)
photos, problems = state.uploaded_photos(key, uploads)
for problem in problems:
    st.warning(problem)
if records.empty:
    st.error(f"{records_file.name} lists no bins.")
    st.stop()

counter = ui.counter_or_stop(exp)  # says so on the page if the model cannot be loaded
with st.spinner(f"Counting {len(records)} bins…"):
    report = state.variance_report(exp.id, state.store_root(), records, key, photos, threshold, budget, prior_wrong)
batch_id = ui.kept_batch(report, photos, counter, batch_settings(counter, prior_wrong, threshold, budget),
                         identity=(exp.id, counting.upload_key([(records_file.name, records_file.getvalue())]), key,
                                   threshold, budget, prior_wrong))

totals = report_totals(report)
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Bins given", totals.given)
c2.metric("Checked", totals.checked)
c3.metric("Flagged", totals.flagged, help=flag_rule(prior_wrong, threshold, budget))
c4.metric("Not checkable", totals.not_checkable, help="recorded above what the model counts")
c5.metric("Errors", totals.errors, help="unreadable or missing photos, invalid recorded quantities")
st.caption(f"{totals_line(totals)}; {flag_rule(prior_wrong, threshold, budget)}.")
st.success(f"Kept as batch {batch_id}: reopen it under \"Reconciliation batches\" without counting again, and "
           "work its flagged bins in the discrepancy queue.", icon=":material/save:")
st.page_link("views/queue.py", label="Open the discrepancy queue", icon=":material/checklist:")
unlisted = sorted({PurePosixPath(p).name for p in photos} - {PurePosixPath(p).name for p in records["image"]})
if unlisted:
    st.caption(f"{len(unlisted)} uploaded photo(s) are not in the CSV and were not checked: {', '.join(unlisted[:10])}")

st.plotly_chart(figures.mismatch_bars(report, threshold if budget is None else None), key="rec-bars")
flagged = report[report["mismatch"]].head(8)
if not flagged.empty:
    st.markdown(f"**The {len(flagged)} riskiest flagged bins**")
    trust = state.trust(exp.id)
    ui.uploaded_grid(flagged, photos, lambda row: f"**{row.image}**: recorded {row.recorded_quantity}, counted "
                     f"{exp.count_label(int(row.predicted_count))}; P(mismatch) {row.p_mismatch:.0%}. "
                     + trust_line(trust, int(row.predicted_count), exp.count_label(int(row.predicted_count))))
st.dataframe(report.drop(columns=["probs"]), hide_index=True, column_config={
    "p_mismatch": st.column_config.ProgressColumn("probability of a mismatch", min_value=0.0, max_value=1.0,
                                                  format="percent"),
    "p_recorded": st.column_config.NumberColumn("photo's probability of the record", format="percent"),
    "confidence": st.column_config.NumberColumn(format="percent"),
    "mismatch": st.column_config.CheckboxColumn("flagged"),
})
st.download_button("Download the report (CSV)", report.to_csv(index=False), file_name="variance_report.csv",
                   mime="text/csv", type="primary")

st.subheader("What does a recount budget buy with this model?")
ui.audit_value(exp, key="rec-audit")
