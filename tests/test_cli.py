"""The CLI's one rule for errors: a user's error is one line on stderr and exit code 2; a bug keeps its traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sentiment_app.cli import app


def test_a_user_error_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["classify", "great", "--model-dir", str(tmp_path / "none")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: no model at {tmp_path / 'none'} (config.json missing): train one with `sentiment train "
        "configs/baseline.yaml`, run `make demo`, or set SENTIMENT_MODEL__DIR"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 1\n")
    result = CliRunner().invoke(app, ["train", str(bad), "--run-root", str(tmp_path)])
    assert result.exit_code == 2 and "learning_rat: unknown key" in result.output
    assert "Traceback" not in result.output


def test_a_bug_is_not_reported_as_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr("sentiment_app.csv_labelling.load_predictor", broken)
    result = CliRunner().invoke(app, ["classify", "great"])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)  # the traceback is kept
    assert "error:" not in result.output
