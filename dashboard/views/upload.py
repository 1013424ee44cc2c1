"""Upload and count: photos (or a sample photo) in, a count, its probabilities and a verdict out."""
from pathlib import Path

import streamlit as st

from core.counting.trust import trust_line
from core.evaluation.priors import DEFAULT_PRIOR, PRIORS, describe
from core.reconcile.inventory import MISMATCH_THRESHOLD, PRIOR_WRONG
from dashboard import counting, figures, state, ui

st.title("Count the items in a bin")
exps = ui.finished_or_stop()
exp = ui.pick_experiment(exps, key="up-model", label="Model (the best one is preselected)")
counter = ui.counter_or_stop(exp)
prior = st.radio("Probabilities under the prior", PRIORS, index=PRIORS.index(DEFAULT_PRIOR), horizontal=True,
                 key="up-prior", format_func=lambda name: {"uniform": "every count alike", "natural": "ABID's mix",
                                                           "batch": "these photos' mix"}[name])

files = st.file_uploader("Bin photos", type=counting.IMAGE_TYPES, accept_multiple_files=True, key="up-files")
photos = [(f.name, f.getvalue()) for f in files or []]

if not photos:
    data_root = state.default_data_root()
    samples = state.sample_paths(data_root, per_count=1) if data_root else None
    if samples is not None and not samples.empty:
        by_name = {Path(p).name: p for p in samples["path"]}
        choice = st.selectbox("…or try a sample photo", [None, *by_name], key="up-sample",
                              format_func=lambda n: "choose a sample" if n is None else n)
        if choice:
            photos = [(choice, Path(by_name[choice]).read_bytes())]

if not photos:
    st.info("Upload one or more photos of bins (JPEG or PNG). Enter the recorded quantity to check it.")
    st.stop()

st.caption(f"Probabilities under {describe(prior)}; the count shown is the most probable count. "
           f"A record is judged against the photo assuming {PRIOR_WRONG:.0%} of records are wrong "
           f"(and every count alike before the photo is seen, whatever prior is shown); "
           f"a bin is flagged at a probability of a mismatch of {MISMATCH_THRESHOLD:.0%} or more.")
counts = state.photo_counts(exp.id, state.store_root(), photos, prior)
if batch := next((p.result.batch for p in counts if p.result is not None and p.result.batch is not None), None):
    st.caption(batch.summary(exp.count_label))


def show(i: int, photo: counting.PhotoCount, data: bytes) -> None:
    """One photo: the pixels the counter decoded, its count and, with a recorded quantity, a verdict."""
    left, right = st.columns([2, 3])
    left.image(counting.preview(data), caption=photo.name, width="stretch")
    with right:
        result = photo.result
        assert result is not None  # the loop below shows the error of a photo it could not count
        c1, c2 = st.columns(2)
        c1.metric("Items counted", exp.count_label(result.count, short=True),
                  help=f"{exp.count_label(result.count)}: the most probable count of the bars below")
        c2.metric("Confidence", f"{result.confidence:.0%}",
                  help=f"its probability under {describe(prior)}; expected count {result.expected:.2f}")
        st.caption(trust_line(state.trust(exp.id), result.count, exp.count_label(result.count)))
        recorded = st.number_input("Recorded quantity (optional)", min_value=0, step=1, value=None,
                                   key=f"up-recorded-{i}-{photo.name}")
        if recorded is not None:
            check = counting.verdict(counter, result, int(recorded))
            if check.p_mismatch is None:
                st.info(check.text, icon=":material/help:")
            elif check.mismatch:
                st.warning(check.text, icon=":material/warning:")
            else:
                st.success(check.text, icon=":material/check_circle:")
        marked = None if recorded is None else min(int(recorded), len(result.probs) - 1) if exp.open_top else recorded
        st.plotly_chart(figures.probability_bars(result.probs, marked, open_top=exp.open_top,
                                                          counted=result.count), key=f"up-probs-{i}")


for i, photo in enumerate(counts):
    with st.container(border=True):
        if photo.result is None:
            st.error(photo.error)
            continue
        try:  # one photo that cannot be shown never hides the others
            show(i, photo, photos[i][1])
        except Exception as err:  # noqa: BLE001  (Streamlit's stop/rerun are BaseExceptions, not caught)
            st.error(f"{photo.name}: counted {photo.result.count}, but it cannot be shown ({err}).")
