"""Entry point Streamlit runs (`sentiment dashboard`): page config and navigation only.

The page scripts live in views/, not pages/: Streamlit would list a pages/ folder a second time.
"""

from pathlib import Path

import streamlit as st

VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="Sentiment stream", page_icon="📈", layout="wide")
st.navigation([
    st.Page(VIEWS / "trends.py", title="Live trends", icon="📈", url_path="trends", default=True),
    st.Page(VIEWS / "reviews.py", title="Reviews", icon="🗂️", url_path="reviews"),
    st.Page(VIEWS / "classify.py", title="Classify", icon="🏷️", url_path="classify"),
    st.Page(VIEWS / "experiments.py", title="Experiments and models", icon="🧪", url_path="experiments"),
]).run()
