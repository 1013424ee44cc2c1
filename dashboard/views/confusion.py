"""Confusion matrix of one experiment; choosing a cell shows its photos."""
import numpy as np
import streamlit as st

from dashboard import figures, state, tables, ui

st.title("What gets confused with what")
exps = ui.finished_or_stop()
exp = ui.pick_experiment(exps, key="cm-exp")
matrix = np.asarray(exp.metrics.confusion_matrix if exp.metrics else [])
n = len(matrix)

chart, side = st.columns([3, 2], gap="large")
view = side.segmented_control("Show", ["photo counts", "row-normalised"], default="photo counts", key="cm-view")
event = chart.plotly_chart(figures.confusion_heatmap(matrix, normalise=view == "row-normalised", open_top=exp.open_top),
                           on_select="rerun", selection_mode="points", key=f"cm-chart-{exp.id}")

# A click on the chart picks the cell; the two pickers below show (and can change) the choice.
points = event.selection.points if event and event.selection else []
clicked = (int(points[0]["y"]), int(points[0]["x"])) if points else None  # (true, predicted)
if clicked and clicked != st.session_state.get("cm-clicked"):
    st.session_state["cm-clicked"] = clicked
    st.session_state["cm-true"], st.session_state["cm-pred"] = clicked
if "cm-true" not in st.session_state:  # start on the most frequent mistake
    off = matrix - np.diag(np.diag(matrix))
    st.session_state["cm-true"], st.session_state["cm-pred"] = (
        int(i) for i in np.unravel_index(off.argmax(), off.shape))

side.caption("Click a cell, or pick it here, to see its photos.")
true_count = side.selectbox("True count", range(n), key="cm-true", format_func=exp.count_label)
pred_count = side.selectbox("Predicted count", range(n), key="cm-pred", format_func=exp.count_label)

preds = state.predictions(exp.id)
photos = tables.cell(preds, true_count, pred_count)
verdict = "counted right" if true_count == pred_count else f"counted as {exp.count_label(pred_count)}"
st.subheader(f"{len(photos)} test photo(s) holding {exp.count_label(true_count)} item(s), {verdict}")
if preds.empty:
    st.caption("This experiment has no per-image predictions stored.")
limit = st.slider("Photos to show", 4, 48, 12, step=4, key="cm-limit") if len(photos) > 12 else 12
items = state.items_by_image(exp.data_root)


def item_list(row) -> None:
    if names := items.get(row.image_id):
        st.caption(", ".join(names))


ui.photo_grid(photos.head(limit), columns=4, caption=lambda row: f"{row.confidence:.0%} sure · `{row.image_id}`",
              details=item_list)
