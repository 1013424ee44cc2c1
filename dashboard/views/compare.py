"""Compare experiments: metrics side by side, curves overlaid, per-class bars, confusion matrices."""
import streamlit as st

from core.analysis.screening import paired_comparison
from core.evaluation.metrics import SplitFigures
from dashboard import figures, state, tables, ui

st.title("Compare experiments")
exps = ui.finished_or_stop()
chosen = ui.pick_experiments(exps, key="compare", default_n=2, label="Experiments to compare (two or more)")
if len(chosen) < 2:
    st.info("Pick at least two experiments.")
    st.stop()

names = tables.labels(chosen)

st.subheader("Test metrics")
st.dataframe(tables.leaderboard(chosen), hide_index=True, column_config=ui.metric_columns())
st.caption("Brackets hold 95% bootstrap intervals (photos resampled within each count).")

st.subheader("The paper's task beside the product's answer")
st.dataframe(tables.answers_table(chosen, {e.id: state.predictions(e.id) for e in chosen}), hide_index=True)
st.caption("On the test bins of 0..5 items. The product may answer \"more than 5\", which is wrong on such a bin; "
           "the paper and Park restrict the answer to 0..5 (the most probable count among them).")

st.subheader("Head to head")
a, b = chosen[0], chosen[1]
open_class = (a.num_classes or 0) - 1 if a.open_top and b.open_top else None
comparison, said, n = paired_comparison(state.predictions(a.id), state.predictions(b.id),
                                        names[a.id], names[b.id], open_class)
st.markdown(f"**{said}**")
if comparison:
    st.caption(f"Paired bootstrap on the {n:,} test photos both models scored"
               f"{' (bins of 0..5 items, as the figures above)' if open_class is not None else ''} "
               f"(A = {names[a.id]}, B = {names[b.id]}; "
               "the first two experiments picked above): a difference whose 95% interval excludes 0 is real, "
               "one whose interval spans 0 is within noise.")
    st.dataframe(tables.comparison_table(comparison), hide_index=True)

st.subheader("Training curves")
curves = {names[e.id]: frame for e in chosen if not (frame := state.epochs(e.id)).empty}
if curves:
    options = figures.curve_metrics(curves)
    metric = st.segmented_control("Curve", options, default=options[0], key="compare-metric",
                                  format_func=lambda m: m.replace("_", " ")) or options[0]
    st.plotly_chart(figures.curves_figure(curves, metric), key="compare-curves")
    st.caption("Solid: training; dashed: validation. Models fitted in one go (classical ones) have no curves.")
else:
    st.caption("None of these experiments logged per-epoch curves (classical models are fitted in one go).")

st.subheader("Accuracy by number of items")
what = st.segmented_control("Per class", ["accuracy", "RMSE"], default="accuracy", key="compare-what") or "accuracy"
test = {names[e.id]: e.metrics or SplitFigures() for e in chosen}
values = {name: m.per_class_accuracy if what == "accuracy" else m.per_class_rmse for name, m in test.items()}
intervals = {name: m.per_class_intervals for name, m in test.items()} if what == "accuracy" else None
st.plotly_chart(figures.per_class_bars(values, what, intervals=intervals, open_top=any(e.open_top for e in chosen)),
                key="compare-bars")

st.subheader("Confusion matrices")
normalise = st.toggle("Row-normalised (share of each true count)", value=True, key="compare-normalise")
for start in range(0, len(chosen), 3):
    for col, exp in zip(st.columns(3), chosen[start:start + 3], strict=False):
        col.plotly_chart(figures.confusion_heatmap(test[names[exp.id]].confusion_matrix, normalise,
                                                   title=names[exp.id], open_top=exp.open_top),
                         key=f"compare-cm-{exp.id}")
