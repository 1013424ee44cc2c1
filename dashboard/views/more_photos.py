"""What more photos buy: a recipe's learning curve, its fit carried out to ABID's size beside the
published results, and where the recounts collected so far put the model."""
import numpy as np
import pandas as pd
import streamlit as st

from core.analysis.learning_curve import ANCHORS, EVAL_SOURCES
from dashboard import figures, state, ui

GAIN = 0.05

st.title("What more photos buy")
st.caption("The same recipe trained on nested shares of the training split (an eighth, a quarter, a half, all of "
           "it), every run scored on the same validation photos on the paper's task (bins of 0..5 items). The "
           "line is fitted against log(photos) and carried out to ABID's size, beside published results trained "
           "on 48,000-481,000 photos. A straight line in log(photos) is an assumption: read far projections as "
           "an order of magnitude.")
whole = [e for e in ui.finished_or_stop() if e.family == "cnn" and not e.folds and not e.recounted_photos
         and e.params.get("train_share", 1) == 1 and e.params.get("train_source", "all") == "all"]
if not whole:
    ui.how_to_train("No CNN trained on the whole training split yet: it is the curve's last point.")
    st.stop()
reference = ui.pick_experiment(whole, key="mp-model", label="Recipe (its run on the whole training split)")
curve = state.learning_curve(reference.id)
command = f".venv/bin/python train.py learning-curve --preset {reference.preset}   # trains the shares it lacks"

left, right = st.columns(2)
trained_on = sorted({p.train_source for p in curve.points})
train_source = left.radio("Trained on", trained_on, horizontal=True, key="mp-train",
                          format_func={"all": "every photo", "natural": "natural mix only",
                                       "originals": "originals only"}.get)
eval_source = right.radio("Scored on", EVAL_SOURCES, horizontal=True, key="mp-eval",
                          format_func=lambda s: "every validation photo" if s == "all" else s)
points = [p for p in curve.points if p.train_source == train_source]
fit = curve.fit(train_source, eval_source)
recounted = state.recounted_photos()

if fit is None:
    st.info(f"{len(points)} point(s) so far: a line needs runs on at least two shares of the training split.")
    st.code(command, language="bash")
else:
    c1, c2, c3 = st.columns(3)
    c1.metric(f"Now, {fit.photos:,} photos", f"{fit.at(fit.photos):.1%}", help="the fitted line at the most photos")
    more = fit.photos_for(GAIN) - fit.photos
    c2.metric(f"+{GAIN * 100:.0f} points of accuracy need",
              "never on this line" if not np.isfinite(more) else f"{more:,.0f} more",
              help=f"labelled photos, such as recounted bins; {fit.per_doubling:+.3f} per doubling "
                   f"({fit.slope_low * np.log(2):+.3f} to {fit.slope_high * np.log(2):+.3f})")
    far = fit.projections[-1]
    c3.metric(f"At {far.photos:,} photos", f"{far.accuracy:.1%}", help=f"95% interval {far.low:.1%}–{far.high:.1%}; "
              "the paper reached 56.2% there")
    st.caption(f"People have recounted {recounted:,} photos so far. Added to the {fit.photos:,} training photos "
               f"they put this line at {fit.at(fit.photos + recounted):.1%} "
               f"({fit.at(fit.photos + recounted) - fit.at(fit.photos):+.1%}).")

photos = [p.photos for p in points]
line = [] if fit is None else [(int(n), fit.at(n)) for n in np.geomspace(min(photos), 481_000, 40)]
marks = [(f"with {p.experiment.recounted_photos:,} recounts", p.photos, p.accuracy(eval_source))
         for p in curve.with_recounts if p.train_source == train_source and p.accuracy(eval_source) is not None]
st.plotly_chart(figures.learning_curve_figure(
    [(p.photos, a) for p in points if (a := p.accuracy(eval_source)) is not None], line,
    [] if fit is None else [(q.photos, q.accuracy, q.low, q.high) for q in fit.projections],
    [(a.label, a.photos, a.accuracy) for a in ANCHORS], marks), key="mp-chart")

st.subheader("The runs, on the same validation photos")
table = curve.table()
st.dataframe(table[table["trained on"] == train_source], hide_index=True)
steps = [s for s in curve.steps if s.train_source == train_source]
if steps:
    st.markdown("\n".join(f"- {s.verdict}" for s in steps))
if fit is not None:
    st.dataframe(pd.DataFrame([{"training photos": f"{q.photos:,}", "accuracy": f"{q.accuracy:.1%}",
                                "95% interval": f"{q.low:.1%}–{q.high:.1%}"} for q in fit.projections]),
                 hide_index=True)
