"""Overview: the leaderboard, runs in progress with live curves, and the data at a glance."""
import streamlit as st

from dashboard import figures, state, tables, ui

st.title("How well do our models count bin items?")

exps = state.experiments()
board = tables.leaderboard(exps)

if board.empty:
    ui.how_to_train()
else:
    top = board.iloc[0]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Best model", top["experiment"], help=state.best_rule_text())
    c2.metric("Balanced accuracy", f"{top['balanced accuracy']:.1%}",
              help="on the test photos; the mean of the per-count accuracies: every count weighs the same. "
                   f"95% interval {top['balanced accuracy (95% CI)']}")
    c3.metric("Accuracy", f"{top['accuracy']:.1%}",
              help=f"share of test photos counted exactly right; 95% interval {top['accuracy (95% CI)']}")
    c4.metric("RMSE", f"{top['RMSE']:.2f}",
              help=f"typical error in items (root mean squared); 95% interval {top['RMSE (95% CI)']}")
    best = next((e for e in exps if e.id == state.best_id()), None)
    if best is not None and (members := tables.members_caption(best)):
        st.caption(members)
    if best is not None and (mistake := tables.confusion_line(best, best.metrics)):
        st.markdown(f"**{best.name}**'s {mistake}, on its test photos.")
    st.subheader("Leaderboard")
    st.caption(f"{state.best_rule_text()}. Ranked by that figure (\"chosen on\": validation, or out-of-fold for "
               "cross-validated models), with test figures beside it; brackets hold 95% bootstrap intervals. "
               "`acc k` is the test accuracy on bins holding k items; \"recounted photos\": photos whose label is a "
               "person's recount (`train.py cnn --with-recounts`).")
    st.dataframe(board, hide_index=True, column_config=ui.metric_columns())


@st.fragment(run_every="5s" if tables.running(exps) else None)
def in_progress() -> None:
    live = tables.running(state.experiments())
    st.subheader("Training now")
    if not live:
        st.caption("No training is running.")
        return
    for exp in live:
        frame = state.epochs(exp.id)
        st.markdown(f"**{exp.name}** · {exp.model} · {len(frame)} epoch(s) so far")
        if frame.empty:
            st.caption("waiting for the first epoch…")
            continue
        metric_names = figures.curve_metrics({exp.name: frame})
        for col, metric in zip(st.columns(min(2, len(metric_names)) or 1), metric_names[:2], strict=False):
            col.plotly_chart(figures.curves_figure({exp.name: frame}, metric), key=f"live-{exp.id}-{metric}")


in_progress()

unfinished = tables.others(exps)
if not unfinished.empty:
    with st.expander(f"Other runs ({len(unfinished)}: running, interrupted or failed)"):
        st.dataframe(unfinished, hide_index=True, column_config={"id": None})

st.subheader("The data at a glance")
data_root = state.default_data_root()
table = state.collection(data_root) if data_root else None
if table is None or not data_root:
    st.caption("No photo collection found: set ABID_DATA or download photos with "
               "`python train.py download --n 2000 --out data/abid`.")
else:
    left, right = st.columns([2, 3])
    left.plotly_chart(figures.count_histogram(table["count"], title=f"{len(table):,} photos by count"))
    with right:
        st.caption(f"One photo of each count from `{data_root}`")
        strip = [(image, row.count) for row in state.sample_paths(data_root, per_count=1).itertuples()
                 if (image := state.thumbnail(str(row.path))) is not None]
        if strip:
            st.image([image for image, _ in strip], caption=[f"{count} item(s)" for _, count in strip], width=150)
