"""Suspect labels: photos whose label is likely wrong (confident learning on probabilities of photos
the model never trained on), each reviewed by a person: "label right", "relabel to N" or "exclude"."""
import pandas as pd
import streamlit as st

from core.reconcile.review import OUTCOME_WORDS, Review, ReviewError, latest, record_review
from core.reconcile.suspects import subject
from core.store.database import Store
from dashboard import figures, state, tables, ui

st.title("Suspect labels")
st.caption("ABID's counts are inventory records, not counts people made: some are wrong, some bins cannot be "
           "counted. Confident learning (cleanlab) ranks the photos whose label the model's probabilities doubt "
           "most, on photos it never trained on. Your decisions go to the store's curation file, which "
           "`train.py cnn --curated` trains on; validation and test figures keep every photo's original label.")
exp = ui.pick_experiment(ui.finished_or_stop(), key="s-model", label="Model")
try:
    found, source = state.suspects(exp.id)
except ValueError as err:
    st.warning(str(err))
    st.stop()
st.caption(f"Probabilities of {source}.")
if found.empty:
    st.success(f"Confident learning finds no suspect label among {exp.name}'s held-out photos.")
    st.stop()
collection = subject(exp.data_root)
store = Store(state.store_root(), create=False)
decided = latest(store, "label", collection).set_index("image")
done = int(found["image_id"].isin(decided.index).sum())
st.progress(done / len(found), text=f"{done} of {len(found)} reviewed")
ids = list(found["image_id"])
pick = st.selectbox("Photo", ids, key="s-photo", format_func=lambda i: f"{ids.index(i) + 1}. {i}  ·  " + (
    OUTCOME_WORDS[str(decided.loc[i, "outcome"])] if i in decided.index else "open"))
row = found.iloc[ids.index(pick)]
left, right = st.columns([3, 2])
image = state.thumbnail(row["path"], width=720)
if image is None:
    left.warning(f"photo not found: {row['path']}")
else:
    left.image(image, caption=pick, width="stretch")
with right:
    c1, c2 = st.columns(2)
    c1.metric("Label", exp.count_label(int(row["label"]), short=True),
              help=f"{exp.count_label(int(row['label']))}: probability {row['p_label']:.0%}")
    c2.metric("The model says", exp.count_label(int(row["suspected"]), short=True),
              help=f"{exp.count_label(int(row['suspected']))}: probability {row['p_suspected']:.0%}")
    st.plotly_chart(figures.probability_bars(row["probs"], int(row["label"]), open_top=exp.open_top),
                    key="s-probs")
    items = state.items_by_image(exp.data_root).get(pick, [])
    st.caption("Items in the metadata: " + ("; ".join(items) if items else "not named"))
writer = ui.who_writes("s")
with st.form(f"s-form-{pick}", clear_on_submit=True):
    outcome = st.radio("Decision", ["label_right", "relabel", "exclude"], horizontal=True, key=f"s-outcome-{pick}",
                       format_func=lambda o: {"relabel": "relabel to N"}.get(o, OUTCOME_WORDS[o]))
    count = st.number_input("N (for relabel)", min_value=0, step=1, value=int(row["suspected"]), key=f"s-count-{pick}")
    note = st.text_input("Note (optional)", key=f"s-note-{pick}")
    submitted = st.form_submit_button("Record", type="primary", disabled=not writer.allowed)
if submitted and writer.allowed:
    try:
        record_review(store, Review("label", collection, pick, outcome, writer.who or "",
                                    int(count) if outcome == "relabel" else None, note, "dashboard"))
    except ReviewError as err:
        st.error(str(err))
    else:
        st.rerun()
if pick in decided.index:
    now = decided.loc[pick]
    st.caption(f"Now: {tables.outcome_text(str(now['outcome']), None if pd.isna(now['count']) else int(now['count']))}"
               f" · {now['who']}")
