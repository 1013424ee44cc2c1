"""The discrepancy queue: one batch's bins to recount, one at a time, each outcome recorded."""
import streamlit as st

from core.counting.trust import trust_line
from core.data.images import ImageError
from core.reconcile.batches import photo_source
from core.reconcile.recounts import QUEUE_MODES, progress_line, queue, queue_bins
from core.reconcile.review import OUTCOME_WORDS, Review, ReviewError, history, record_review
from core.store.database import Store
from core.store.records import count_label
from dashboard import counting, figures, state, tables, ui

st.title("Discrepancy queue")
st.caption("Work through the bins of a batch: look at the photo, recount the bin, record what you found. "
           "Keyboard: Tab to the outcome (arrow keys choose), the count and the note; Enter records it and "
           "opens the next open bin.")
batches = ui.batches_or_stop(state.batches())
batch = ui.batch_picker(batches, key="q-batch")
left, right = st.columns([2, 1])
mode = left.radio("Order", list(QUEUE_MODES), horizontal=True, key="q-mode", captions=list(QUEUE_MODES.values()))
flagged = batch.totals.flagged if batch.totals else 0
size = right.number_input("Bins in the queue", min_value=1, value=max(flagged, 1) if flagged else 20, step=1,
                          key=f"q-size-{batch.id}",
                          help=f"{flagged} bins are flagged ({batch.settings.get('rule', '')})")
bins = state.batch_outcomes(batch.id)
todo = queue(bins, mode, int(size))
if todo.empty:
    st.info("This batch has no checked bin to recount (every bin had an error or a record the model cannot check).")
    st.stop()
work = {b.image: b for b in queue_bins(todo)}
images = list(work)
done = sum(b.done for b in work.values())
st.progress(done / len(work), text=progress_line(done, len(work)))

position_key = f"q-pos-{batch.id}-{mode}"
if f"{position_key}-next" in st.session_state:  # set by the last outcome recorded: the next open bin
    st.session_state[position_key] = st.session_state.pop(f"{position_key}-next")
if st.session_state.get(position_key) not in work:
    st.session_state[position_key] = next((i for i in images if not work[i].done), images[0])
image = st.selectbox("Bin", images, key=position_key,
                     format_func=lambda i: f"{images.index(i) + 1}. {i}  ·  "
                                           f"{tables.outcome_text(work[i].outcome, work[i].count)}")
row = work[image]
st.subheader(f"Bin {images.index(image) + 1} of {len(images)}: {image}")
store = Store(state.store_root(), create=False)
num_classes, open_top = int(batch.settings.get("num_classes") or 0), bool(batch.settings.get("open_top"))
counted = count_label(row.predicted, num_classes, open_top)

photo_col, facts_col = st.columns([3, 2])
with photo_col:
    source = photo_source(store, batch, {"stored_copy": row.stored_copy, "path": row.path})
    try:
        if source is None:
            raise ValueError("the batch kept no photo of it")
        st.image(counting.preview(source.read_bytes(), max_px=900), caption=image, width="stretch")
    except (OSError, ImageError, ValueError) as err:
        st.warning(f"The photo of {image} cannot be shown ({err}).")
with facts_col:
    c1, c2, c3 = st.columns(3)
    c1.metric("Recorded", row.recorded)
    c2.metric("Counted", count_label(row.predicted, num_classes, open_top, short=True), help=counted)
    c3.metric("P(mismatch)", f"{row.p_mismatch:.0%}",
              help=f"with {batch.prior_wrong:.0%} of records assumed wrong before the photo is seen")
    st.caption(trust_line(state.trust(batch.model), row.predicted, counted))
    marked = min(row.recorded, len(row.probs) - 1) if open_top else row.recorded
    st.plotly_chart(figures.probability_bars(row.probs, marked, open_top=open_top, counted=row.predicted),
                    key="q-probs")
    if row.done:
        st.markdown(f"**Now:** {tables.outcome_text(row.outcome, row.count)} · {row.who} · {tables.when(row.at)}")

writer = ui.who_writes("q")
outcomes = ["recounted", "confirmed", "unusable"]
with st.form(f"q-form-{batch.id}-{image}", clear_on_submit=True, enter_to_submit=True):
    outcome = st.radio("Outcome", outcomes, horizontal=True, key=f"q-outcome-{image}",
                       format_func=lambda o: {"recounted": "recounted: N items"}.get(o, OUTCOME_WORDS[o]))
    count = st.number_input("Items counted (for \"recounted\")", min_value=0, step=1, value=row.predicted,
                            key=f"q-count-{image}")
    note = st.text_input("Note (optional)", key=f"q-note-{image}")
    submitted = st.form_submit_button("Record and open the next bin", type="primary", disabled=not writer.allowed)
if submitted and not writer.allowed:
    st.error(writer.reason)
elif submitted:
    try:
        record_review(store, Review("recount", batch.id, image, outcome, writer.who or "",
                                    int(count) if outcome == "recounted" else None, note, "dashboard"))
    except ReviewError as err:
        st.error(str(err))
    else:
        remaining = [i for i in images if i != image and not work[i].done]
        st.session_state[f"{position_key}-next"] = remaining[0] if remaining else image
        st.rerun()

entries = history(store, "recount", batch.id, image)
if not entries.empty:
    st.markdown("**History of this bin** (every entry kept; the latest counts)")
    st.dataframe(tables.review_history(entries), hide_index=True)
