"""The model lifecycle: the evaluation-set catalogue, publish / promote / rollback with the promotion
policy and the ``current`` pointer, and ``refresh`` (retrain on feedback, then gate the candidate)."""
