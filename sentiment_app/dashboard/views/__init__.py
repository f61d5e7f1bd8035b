"""Page scripts Streamlit runs (see stream/dashboard/app.py); a package so that wheels ship them."""
