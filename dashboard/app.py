"""binsight dashboard: `streamlit run dashboard/app.py` (the store is BINSIGHT_STORE, default models/)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts only dashboard/ on the path; pages import core
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="binsight", page_icon=":material/inventory_2:", layout="wide")

PAGES = {
    "Models": [
        st.Page("pages/overview.py", title="Overview", icon=":material/leaderboard:", default=True),
        st.Page("pages/compare.py", title="Compare experiments", icon=":material/compare_arrows:"),
        st.Page("pages/per_class.py", title="Per-class accuracy", icon=":material/bar_chart:"),
        st.Page("pages/confusion.py", title="Confusion matrix", icon=":material/grid_on:"),
        st.Page("pages/lr_finder.py", title="Learning-rate finder", icon=":material/show_chart:"),
        st.Page("pages/misclassified.py", title="Misclassified photos", icon=":material/image_search:"),
    ],
    "Counting": [
        st.Page("pages/upload.py", title="Upload and count", icon=":material/photo_camera:"),
        st.Page("pages/reconcile.py", title="Reconcile a batch", icon=":material/fact_check:"),
    ],
}

st.navigation(PAGES).run()
