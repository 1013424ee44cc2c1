"""Misclassified test photos: filter by true and predicted count, sort by confidence."""
import streamlit as st

from core.evaluation.priors import describe
from dashboard import state, tables, ui

st.title("Photos the model counted wrong")
exps = ui.finished_or_stop()
exp = ui.pick_experiment(exps, key="mis-exp")
preds = state.predictions(exp.id)
if preds.empty:
    st.info("This experiment has no per-image predictions stored.")
    st.stop()

counts = list(range(len(preds["probs"].iloc[0])))
c1, c2, c3 = st.columns([2, 2, 1])
true_counts = c1.multiselect("True count", counts, key="mis-true", placeholder="any", format_func=exp.count_label)
pred_counts = c2.multiselect("Predicted count", counts, key="mis-pred", placeholder="any", format_func=exp.count_label)
order = c3.radio("Sort", ["most confident first", "least confident first"], key="mis-order")
wrong = tables.misclassified(preds, true_counts or None, pred_counts or None,
                             most_confident_first=order == "most confident first")

st.subheader(f"{len(wrong)} of {len(preds)} test photos counted wrong")
st.caption(f"Probabilities under {describe(exp.calibration.shown_prior)}"
           + ("." if exp.calibration.shown_prior == "fit" else "; the count predicted is the most probable one."))
if wrong.empty:
    st.success("No mistakes with these filters.")
    st.stop()
limit = st.slider("Photos to show", 3, min(60, len(wrong)), min(12, len(wrong)), key="mis-limit") \
    if len(wrong) > 3 else len(wrong)
items = state.items_by_image(exp.data_root)


def details(row) -> None:
    st.caption(" · ".join(f"{exp.count_label(k)}: {p:.0%}" for k, p in enumerate(row.probs)))
    if names := items.get(row.image_id):
        st.caption("Items: " + ", ".join(names))


ui.photo_grid(wrong.head(limit), columns=3, details=details,
              caption=lambda row: f"**true {exp.count_label(row.true_count)}**, predicted "
                                  f"**{exp.count_label(row.pred_count)}** "
                                  f"({row.confidence:.0%} sure) · `{row.image_id}`")
