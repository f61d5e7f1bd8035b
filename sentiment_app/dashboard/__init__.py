"""The Streamlit dashboard (`sentiment dashboard`): live trends, latest reviews, ad-hoc classification,
experiments and models.

Each page keeps its logic in plain functions (data in, DataFrame or figure out) in a module here, and
its Streamlit layout in a ``render()`` function; ``views/*.py`` are the thin scripts Streamlit runs.
Importing this package does not import Streamlit, so the CLI stays light.
"""
