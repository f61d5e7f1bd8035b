"""Page scripts Streamlit runs (see sentiment_app/dashboard/app.py); a package so that wheels ship them."""
