"""What the recounts say: the flags' realised precision, the share of wrong records and the model's
accuracy on the recounted bins, each with its 95% interval, beside what the model expected."""
import streamlit as st

from core.reconcile.recounts import batch_summary, model_summary, suggestion_line, summary_table
from core.store.database import Store
from dashboard import state, ui

st.title("What the recounts say")
st.caption("People's recounts check the model on your own stock: do the probabilities it gave hold? "
           "Measured on the recounted bins only (those worked in the queue), so the figures describe the bins "
           "that were recounted, not the whole batch.")
batches = ui.batches_or_stop(state.batches())
scope = st.radio("Over", ["one batch", "every batch of its model"], horizontal=True, key="r-scope")
batch = ui.batch_picker(batches, key="r-batch")
store = Store(state.store_root(), create=False)
summary = batch_summary(store, batch.id) if scope == "one batch" else model_summary(store, batch.model)
where = f"batch {batch.id}" if scope == "one batch" else \
    f"the {sum(b.model == batch.model for b in batches)} batches of {batch.model_name}"
st.caption(f"On {where}: {summary.recounted} bins recounted to a number.")
c1, c2, c3 = st.columns(3)
for col, fig in zip((c1, c2, c3), (summary.precision, summary.wrong_share, summary.accuracy), strict=True):
    low, high = fig.interval
    col.metric(fig.name.capitalize(), "–" if not fig.n else f"{fig.value:.0%}",
               help=f"Wilson 95% interval over {fig.n} recounted bins; expected: {fig.expected_means}")
    if fig.n:
        col.caption(f"95% {low:.0%}–{high:.0%}, n = {fig.n}; the model expected "
                    f"{fig.expected:.0%}" if fig.expected is not None else f"95% {low:.0%}–{high:.0%}, n = {fig.n}")
st.dataframe(summary_table(summary), hide_index=True, column_config={
    c: st.column_config.NumberColumn(format="percent") for c in ("measured", "95% low", "95% high", "model expected")})
st.info(suggestion_line(summary), icon=":material/tune:")
st.caption("The suggested prior is the share of wrong records under which the model's P(mismatch) of the "
           "recounted bins averages to the share found wrong; set it on the \"Reconcile a batch\" page.")
