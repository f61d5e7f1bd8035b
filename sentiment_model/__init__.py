"""The model artifact contract and the one predictor.

What training writes and serving reads lives here and nowhere else: the label order, the text cleaning,
the pooling head, the drift reference profile, ``training_run.json`` and what makes a directory a model.
``Predictor`` is the only inference path (worker, ``classify``, dashboard, ``evaluate``, distillation,
the promotion gate). This package imports no other package of the project.
"""
