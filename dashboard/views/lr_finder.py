"""Learning-rate finder curves, the suggested rate starred, several overlaid."""
import pandas as pd
import streamlit as st

from dashboard import figures, state, tables

st.title("Learning-rate finder")
st.caption("Before training, the loss is measured while the learning rate grows; training uses a rate "
           "where the loss still falls steeply (the star).")

exps = [e for e in state.experiments() if state.lr_curves(e.id)]
if not exps:
    st.info("No experiment has run the learning-rate finder yet. Run a sweep "
            "(CNN presets without a fixed rate also run one before training):")
    st.code(".venv/bin/python train.py lr-find --preset quick", language="bash")
    st.stop()

names = tables.labels(exps)
by_id = {e.id: e for e in exps}
chosen = st.multiselect("Experiments", list(by_id), default=list(by_id)[:3], key="lr-exps",
                        format_func=lambda i: f"{names[i]}  ·  {by_id[i].model}")
curves = [{**curve, "label": names[i] if curve["name"] == "lr_finder" else f"{names[i]} · {curve['name']}"}
          for i in chosen for curve in state.lr_curves(i)]
if not curves:
    st.info("Pick one or more experiments.")
    st.stop()

st.plotly_chart(figures.lr_finder_figure(curves), key="lr-chart")
st.dataframe(pd.DataFrame([{"curve": c["label"], "suggested learning rate": c["suggested"], "steps": len(c["lrs"])}
                           for c in curves]),
             hide_index=True, column_config={"suggested learning rate": st.column_config.NumberColumn(format="%.2e")})
