"""Per-class accuracy and RMSE of one experiment (the paper's Tables I and II)."""
import streamlit as st

from core.evaluation.metrics import SplitFigures, headline_text
from core.evaluation.priors import describe
from dashboard import figures, tables, ui

st.title("Accuracy by number of items")
exps = ui.finished_or_stop()
exp = ui.pick_experiment(exps, key="per-class")
metrics = exp.metrics or SplitFigures()  # the page lists scored experiments only
accuracy_ci, balanced_ci, rmse_ci = headline_text(metrics, percent=True)

c1, c2, c3, c4 = st.columns(4)
c1.metric("Accuracy", f"{metrics.accuracy:.1%}", help="95% interval: " + accuracy_ci)
c2.metric("Balanced accuracy", f"{metrics.balanced_accuracy:.1%}", help="95% interval: " + balanced_ci)
c3.metric("RMSE", f"{metrics.rmse:.2f}", help="95% interval: " + rmse_ci)
c4.metric("Test photos", f"{metrics.n:,}")
st.caption("On the test photos, with 95% bootstrap intervals: "
           f"accuracy {accuracy_ci}, balanced accuracy {balanced_ci}, RMSE {rmse_ci}."
           + (f" Out-of-fold over {exp.cv_metrics.n:,} train+validation photos ({exp.folds} folds): balanced "
              f"accuracy {headline_text(exp.cv_metrics, percent=True)[1]}." if exp.cv_metrics else ""))

per_class = tables.per_class_table(metrics)
left, right = st.columns(2)
left.plotly_chart(figures.per_class_bars({exp.name: metrics.per_class_accuracy}, "accuracy",
                                         title="Accuracy: share counted exactly right (95% intervals)",
                                         intervals={exp.name: metrics.per_class_intervals},
                                         open_top=exp.open_top),
                  key="pc-acc")
right.plotly_chart(figures.per_class_bars({exp.name: metrics.per_class_rmse}, "RMSE",
                                          title="RMSE: typical error in items", open_top=exp.open_top),
                   key="pc-rmse")
if (open_class := metrics.open_class) and exp.num_classes:
    st.caption(f"Accuracy, balanced accuracy and RMSE are on bins of 0..{exp.num_classes - 2} items, the paper's task. "
               f"The model also learns \"{exp.count_label(exp.num_classes - 1)}\": it recognises "
               f"{open_class.recall or 0:.0%} of the {open_class.n} test bins that hold more (the last bar).")
if mistake := tables.confusion_line(exp, metrics):
    st.markdown(f"**Its {mistake}**, on the test photos; the confusion matrix page shows them.")
st.dataframe(per_class, hide_index=True, column_config={
    "accuracy": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent"),
    "RMSE": st.column_config.NumberColumn(format="%.3f"),
})
st.caption("Counts with few test photos give noisy numbers; a blank means no test photo holds that count.")

st.subheader("How far can we trust it?")
calibration = exp.calibration
if calibration.coverage:
    coverage, accuracy = calibration.coverage, calibration.coverage_accuracy
    half = accuracy[min(range(len(coverage)), key=lambda i: abs(coverage[i] - 0.5))]
    st.caption(f"If the model decides only the half of the bins it is surest of and people recount the rest, "
               f"it is right on {half:.0%} of the bins it decides "
               f"(test photos; {accuracy[-1]:.0%} when it decides all).")
    st.plotly_chart(figures.coverage_curve(coverage, accuracy), key="pc-coverage")
    nan = float("nan")
    before = nan if calibration.ece_test_before is None else calibration.ece_test_before
    after = nan if calibration.ece_test_after is None else calibration.ece_test_after
    st.caption(f"Confidence calibrated by {calibration.method} on {calibration.n_fit or '?'} held-out photos; "
               f"probabilities under {describe(calibration.shown_prior)}; "
               f"test ECE {before:.3f} before, {after:.3f} after.")
else:
    st.caption("Not known: this model was trained by an older binsight, before calibration was part of training.")

st.subheader("What does a recount budget buy?")
ui.audit_value(exp, key="pc-audit")
