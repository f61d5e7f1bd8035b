"""The application layer: the `sentiment` CLI, the dashboard, the demo and the model lifecycle.

It orchestrates the packages below it (``stream`` the worker, ``training`` which produces models,
``storage`` the databases, ``sentiment_model`` the artifact contract and the predictor); nothing
below imports it (import-linter contracts in pyproject.toml).
"""
