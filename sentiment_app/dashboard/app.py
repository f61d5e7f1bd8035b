"""Entry point Streamlit runs (`sentiment dashboard`): page config and navigation only.

The default page (trends) is served at "/". The page scripts live in views/, not pages/: Streamlit would
list a pages/ folder a second time.
"""

from pathlib import Path

import streamlit as st

VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="Sentiment stream", page_icon=":material/monitoring:", layout="wide")
st.navigation([
    st.Page(VIEWS / "trends.py", title="Live trends", icon=":material/monitoring:", url_path="trends", default=True),
    st.Page(VIEWS / "reviews.py", title="Reviews", icon=":material/reviews:", url_path="reviews"),
    st.Page(VIEWS / "classify.py", title="Classify", icon=":material/label:", url_path="classify"),
    st.Page(VIEWS / "experiments.py", title="Experiments and models", icon=":material/science:",
            url_path="experiments"),
]).run()
