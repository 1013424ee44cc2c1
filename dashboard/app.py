"""binsight dashboard: `streamlit run dashboard/app.py` (the store is BINSIGHT_STORE, default models/)."""
from __future__ import annotations

import streamlit as st

from dashboard.pages import PAGES

st.set_page_config(page_title="binsight", page_icon=":material/inventory_2:", layout="wide")

sections: dict[str, list[st.Page]] = {}
for page in PAGES:
    sections.setdefault(page.section, []).append(
        st.Page(page.script, title=page.title, icon=page.icon, default=page is PAGES[0]))

st.navigation(sections).run()
