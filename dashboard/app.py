"""binsight dashboard: `streamlit run dashboard/app.py` (the store is BINSIGHT_STORE, default models/)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts only dashboard/ on the path; pages import core
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="binsight", page_icon=":material/inventory_2:", layout="wide")

# Page scripts live in views/, not pages/: Streamlit would serve a pages/ folder as pages of its
# own (bypassing this file) when a browser opens a page's URL directly.
PAGES = {
    "Models": [
        st.Page("views/overview.py", title="Overview", icon=":material/leaderboard:", default=True),
        st.Page("views/compare.py", title="Compare experiments", icon=":material/compare_arrows:"),
        st.Page("views/per_class.py", title="Per-class accuracy", icon=":material/bar_chart:"),
        st.Page("views/confusion.py", title="Confusion matrix", icon=":material/grid_on:"),
        st.Page("views/lr_finder.py", title="Learning-rate finder", icon=":material/show_chart:"),
        st.Page("views/misclassified.py", title="Misclassified photos", icon=":material/image_search:"),
    ],
    "Counting": [
        st.Page("views/upload.py", title="Upload and count", icon=":material/photo_camera:"),
        st.Page("views/reconcile.py", title="Reconcile a batch", icon=":material/fact_check:"),
    ],
}

st.navigation(PAGES).run()
