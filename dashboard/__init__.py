"""The managers' dashboard: a multipage Streamlit app over the experiment store and the counter."""
