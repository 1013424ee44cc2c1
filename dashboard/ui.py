"""Page parts used on several pages: the how-to-train notice, experiment pickers, photo grids."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from core.reconcile.inventory import PRIOR_WRONG, SIMULATED_ERROR_RATE, audit_table
from core.store.database import selection_score
from core.store.records import Experiment
from dashboard import figures, state
from dashboard.access import LOCAL_SUFFIX, Writer, login_here
from dashboard.tables import labels, members_caption, model_text

TRAIN_COMMANDS = (
    ".venv/bin/python train.py suite                  # the default experiments: PCA and HOG SVMs, a small CNN",
    ".venv/bin/python train.py cnn --preset quick     # or one at a time (see: train.py --help)",
)

RECONCILE_COMMAND = ".venv/bin/python train.py reconcile            # every photo of the default data folder"


def how_to_train(reason: str = "No finished experiment in the store yet.") -> None:
    st.info(f"{reason} Train a model from the project folder, then come back to this page:")
    st.code("\n".join(TRAIN_COMMANDS), language="bash")
    st.caption(f"Experiments are read from `{state.store_root()}` (set `BINSIGHT_STORE` to use another store).")


def finished_or_stop() -> list[Experiment]:
    """The finished experiments; if there are none, explain how to train and end the page here."""
    exps = state.finished()
    if not exps:
        how_to_train()
        st.stop()
    return exps


def _ordered(exps: Sequence[Experiment]) -> list[Experiment]:
    """Best first (chosen on validation): the default choice is the model the counter uses."""
    best = state.best_id()
    return sorted(exps, key=lambda e: (e.id != best, -(selection_score(e) or 0)))


def pick_experiment(exps: Sequence[Experiment], key: str, label: str = "Experiment") -> Experiment:
    ordered = _ordered(exps)
    names = labels(ordered)
    best = state.best_id()
    by_id = {e.id: e for e in ordered}
    chosen = st.selectbox(label, list(by_id), key=key, format_func=lambda i: f"{names[i]}  ·  {model_text(by_id[i])}"
                          + ("  ★ best" if i == best else ""))
    if caption := members_caption(by_id[chosen]):
        st.caption(caption)
    return by_id[chosen]


def pick_experiments(exps: Sequence[Experiment], key: str, default_n: int = 2,
                     label: str = "Experiments") -> list[Experiment]:
    ordered = _ordered(exps)
    names = labels(ordered)
    by_id = {e.id: e for e in ordered}
    chosen = st.multiselect(label, list(by_id), default=list(by_id)[:default_n], key=key,
                            format_func=lambda i: f"{names[i]}  ·  {model_text(by_id[i])}")
    return [by_id[i] for i in chosen]


def metric_columns() -> dict:
    """Column formats shared by every table of experiments."""
    pct = st.column_config.NumberColumn(format="percent", width="small")
    return {
        "accuracy": st.column_config.ProgressColumn("accuracy", min_value=0.0, max_value=1.0, format="percent"),
        "balanced accuracy": st.column_config.ProgressColumn("balanced accuracy", min_value=0.0, max_value=1.0,
                                                             format="percent"),
        "RMSE": st.column_config.NumberColumn(format="%.2f", width="small"),
        **{f"acc {k}": pct for k in range(10)},
        "test photos": st.column_config.NumberColumn(width="small"),
        "recounted photos": st.column_config.NumberColumn(
            width="small", help="photos it trained and was scored on with a person's recount as their label"),
        "selection balanced accuracy": None,  # shown with its interval in "selection (95% CI)"
        "ECE": st.column_config.NumberColumn(format="%.3f", width="small",
                                             help="expected calibration error of the calibrated test probabilities"),
        "train time (s)": st.column_config.NumberColumn(format="%.0f", width="small"),
        "id": None,
    }


def photo_grid(photos: pd.DataFrame, caption, columns: int = 4, details=None) -> None:
    """Photos (a frame with a `path` column) in a grid; `caption(row)` under each, `details(row)` below it."""
    rows = list(photos.itertuples(index=False))
    for start in range(0, len(rows), columns):
        for col, row in zip(st.columns(columns), rows[start:start + columns], strict=False):
            with col.container(border=True):
                image = state.thumbnail(str(row.path))
                if image is None:
                    st.warning(f"photo not found: {row.path}")
                else:
                    st.image(image, width="stretch")
                st.markdown(caption(row))
                if details is not None:
                    details(row)


def counter_or_stop(exp: Experiment):
    """The loaded counter for `exp`; if the model cannot be loaded, say why and end the page here."""
    from core.counting.service import ModelNotFound

    try:
        return state.counter(exp.id, state.store_root())
    except (ModelNotFound, ImportError, KeyError, OSError, ValueError) as err:
        st.error(f"The model {exp.name} cannot be loaded: {err}")
        st.stop()


def audit_value(exp: Experiment, key: str) -> None:
    """What a recount budget buys for this model: the audit-value curve and table on its test photos."""
    rate = st.slider("Simulated share of wrong records", 0.05, 0.5, SIMULATED_ERROR_RATE, 0.05, key=f"{key}-rate")
    curve = state.audit_curve(exp.id, rate)
    if curve is None:
        st.caption("No stored test predictions for this model.")
        return
    st.caption(f"Measured on the model's {curve.n} test photos, {curve.wrong} of their records moved by 1 or 2 "
               f"items at random (seed {curve.seed}); bins ranked by the probability of a mismatch with "
               f"{PRIOR_WRONG:.0%} of records assumed wrong. ROC AUC {curve.roc_auc:.2f}, average precision "
               f"{curve.average_precision:.2f}; the threshold {curve.threshold:.0%} "
               f"flags {curve.flagged} bins "
               f"({curve.flagged_precision:.0%} of them wrong records).")
    left, right = st.columns([3, 2])
    left.plotly_chart(figures.audit_value_curve(curve), key=f"{key}-curve")
    right.dataframe(audit_table(curve), hide_index=True, column_config={
        "wrong records caught": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent")})


def who_writes(key: str) -> Writer:
    """Who records outcomes on this page (`dashboard.access`), said on the page; a local user names
    themselves (kept for the session)."""
    from dashboard.access import current_writer

    name = st.session_state.get("local-name", "")
    found = current_writer(name)
    if found.allowed and found.who and found.who.endswith(LOCAL_SUFFIX):
        name = st.text_input("Your name (recorded with each outcome)", value=name, key=f"{key}-name",
                             placeholder=found.who.removesuffix(LOCAL_SUFFIX))
        st.session_state["local-name"] = name
        found = current_writer(name)
    elif not found.allowed and login_here():
        st.button("Sign in", on_click=st.login, key=f"{key}-login", icon=":material/login:")
    st.caption(found.reason)
    return found


def batches_or_stop(batches: Sequence) -> Sequence:
    """The store's reconciliation batches; with none, the page says how to make one and stops."""
    if not batches:
        first = () if state.finished() else TRAIN_COMMANDS[:1]
        st.info("No reconciliation batch in the store yet. Reconcile one on the \"Reconcile a batch\" page, or "
                "from the project folder (the data folder's labels are taken as the recorded quantities; "
                "`--records FILE.csv` gives your own):")
        st.code("\n".join([*first, RECONCILE_COMMAND]), language="bash")
        st.stop()
    return batches


def batch_picker(batches: Sequence, key: str, label: str = "Batch"):
    """A batch of the store, the one last opened preselected (kept across pages)."""
    ids = [b.id for b in batches]
    chosen = st.session_state.get("open-batch")
    index = ids.index(chosen) if chosen in ids else 0
    by_id = {b.id: b for b in batches}

    def name(batch_id: str) -> str:
        b = by_id[batch_id]
        if b.totals is None:
            return f"{batch_id} · {b.model_name} · not finished"
        return f"{batch_id} · {b.model_name} · {b.totals.given} bins, {b.totals.flagged} flagged"

    picked = st.selectbox(label, ids, index=index, key=key, format_func=name)
    st.session_state["open-batch"] = picked
    return by_id[picked]


def kept_batch(report: pd.DataFrame, photos: dict[str, bytes], counter, settings: dict, identity: tuple) -> str:
    """Keep a dashboard reconcile as a batch in the store, once per set of inputs and settings in a
    session (reruns of the page do not keep it again); its id."""
    from core.reconcile.batches import save_uploaded_batch
    from core.store.database import Store

    kept = st.session_state.setdefault("kept-batches", {})
    if identity not in kept:
        kept[identity] = save_uploaded_batch(Store(state.store_root(), create=False), report, photos, counter, settings)
        st.session_state["open-batch"] = kept[identity]
    return kept[identity]


def uploaded_grid(rows: pd.DataFrame, photos: dict[str, bytes], caption, columns: int = 4) -> None:
    """Uploaded photos (by a frame's `image` column) in a grid, `caption(row)` under each."""
    from core.data.images import ImageError
    from dashboard.counting import preview

    items = list(rows.itertuples(index=False))
    for start in range(0, len(items), columns):
        for col, row in zip(st.columns(columns), items[start:start + columns], strict=False):
            with col.container(border=True):
                try:
                    st.image(preview(photos[str(row.image)], max_px=480), width="stretch")
                except (KeyError, ImageError) as err:
                    st.warning(f"{row.image}: cannot be shown ({err})")
                st.markdown(caption(row))
