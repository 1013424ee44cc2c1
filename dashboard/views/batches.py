"""Reconciliation batches: every reconcile kept in the store, reopened without counting again."""
import streamlit as st

from core.reconcile.batches import batch_report, delete_batch
from core.reconcile.inventory import report_totals, totals_line
from core.store.database import Store
from dashboard import figures, state, tables, ui

st.title("Reconciliation batches")
st.caption("Every reconcile (this dashboard's or `train.py reconcile`'s) is kept: reopen its report here without "
           "counting again, then work its bins in the discrepancy queue.")
batches = ui.batches_or_stop(state.batches())
st.dataframe(tables.batches_table(batches, state.recounted_per_batch()), hide_index=True, column_config={
    "prior share of wrong records": st.column_config.NumberColumn(format="percent")})

batch = ui.batch_picker(batches, key="b-batch", label="Open a batch")
store = Store(state.store_root(), create=False)
report = batch_report(store, batch.id)
totals = report_totals(report)
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Bins given", totals.given)
c2.metric("Checked", totals.checked)
c3.metric("Flagged", totals.flagged, help=batch.settings.get("rule", ""))
c4.metric("Not checkable", totals.not_checkable, help="recorded above what the model counts")
c5.metric("Errors", totals.errors)
st.caption(f"{totals_line(totals)}; {batch.settings.get('rule', '')}; model {batch.model_name} ({batch.model}), "
           f"reconciled {tables.when(batch.created_at)}.")
st.page_link("views/queue.py", label="Work this batch's discrepancy queue", icon=":material/checklist:")
st.plotly_chart(figures.mismatch_bars(report, batch.settings.get("threshold")), key="b-bars")
st.dataframe(report.drop(columns=["probs"]), hide_index=True, column_config={
    "p_mismatch": st.column_config.ProgressColumn("probability of a mismatch", min_value=0.0, max_value=1.0,
                                                  format="percent"),
    "confidence": st.column_config.NumberColumn(format="percent"),
    "mismatch": st.column_config.CheckboxColumn("flagged")})
st.download_button("Download the report (CSV)", report.to_csv(index=False), file_name=f"batch-{batch.id}.csv",
                   mime="text/csv")

with st.expander("Delete this batch"):
    writer = ui.who_writes("b")
    st.caption("Deleting removes the batch and its report; the outcomes recorded on it stay in the review log "
               "(who recorded what, when). Export the adjustments first (`train.py recount export`) if the "
               "warehouse system still needs them.")
    sure = st.checkbox(f"Yes, delete batch {batch.id}", key=f"b-sure-{batch.id}", disabled=not writer.allowed)
    if st.button("Delete", key=f"b-delete-{batch.id}", disabled=not (sure and writer.allowed)):
        delete_batch(store, batch.id)
        st.session_state.pop("open-batch", None)
        st.rerun()
