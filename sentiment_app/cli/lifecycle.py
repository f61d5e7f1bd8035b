"""The model lifecycle on live data: `sentiment refresh` and `sentiment drift [profile]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sentiment_app.cli.root import app, console
from sentiment_app.terminal_text import PlainTable as Table  # every cell literal, no control characters
from sentiment_app.terminal_text import markup_safe
from stream.settings import get_settings


@app.command()
def refresh(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="refresh YAML (configs/refresh.yaml)")],
    if_drift: Annotated[bool, typer.Option(help="only if the latest hour's drift is above the threshold")] = False,
    run_id: Annotated[str | None, typer.Option(help="name of the run directory [default: time + name]")] = None,
) -> None:
    """Retrain on the base data plus all feedback, score against production, promote through the gate.

    Writes a one-page report.md in the run directory. Schedule it with cron, a systemd timer or the compose
    `refresh` profile (README "Closing the loop").

    Example: sentiment refresh configs/refresh.yaml --if-drift
    """
    from sentiment_app.lifecycle.refresh import load_refresh_config, run_refresh
    from storage.db import get_engine
    from stream.drift import latest_score
    from stream.services import check_postgres, check_redis, trend_counters

    s = get_settings()
    cfg = load_refresh_config(config)  # fail on a bad config before anything runs
    if if_drift:
        check_redis(s)
        score = latest_score(trend_counters(s), hours=2)
        if score is None or score.score <= s.drift.threshold:
            console.print("no refresh: " + (f"drift {score.score:.3f} <= threshold {s.drift.threshold:g} (hour "
                                            f"{score.hour})" if score else "no drift score in the last 2 hours"))
            return
        console.print(f"drift {score.score:.3f} > threshold {s.drift.threshold:g} (hour {score.hour}): refreshing")
    check_postgres(s)
    result = run_refresh(cfg, s, get_engine(s.postgres.url.get_secret_value()), run_id)
    c = result.counts
    console.print(f"feedback: {c.corrections} corrected reviews, {c.held_out} held out, {c.added_to_train} added "
                  f"to train, {c.replaced_base_labels} base labels replaced")
    console.print(f"candidate {result.candidate}: {'PROMOTED' if result.promoted else 'not promoted'} "
                  f"({result.reason})")
    console.print(f"report: {result.report}")


drift_app = typer.Typer(help="Drift of the live stream from the production model's reference.\n\n\b\nExamples:\n"
                        "  sentiment drift --hours 48\n"
                        "  sentiment drift profile runs/<run>/model shared:tweeteval_sentiment",
                        invoke_without_command=True, rich_markup_mode=None)


@drift_app.callback()
def drift(ctx: typer.Context, hours: Annotated[int, typer.Option(help="show the last N hours")] = 24) -> None:
    """Per-hour drift scores kept by the workers (label-mix PSI + confidence drop against the reference).

    Example: sentiment drift --hours 48   |   sentiment drift profile runs/<run>/model shared:tweeteval_sentiment
    """
    if ctx.invoked_subcommand is not None:
        return
    from stream.services import check_redis, trend_counters

    s = get_settings()
    check_redis(s)
    counters = trend_counters(s)
    reference = counters.drift_reference()
    if reference is None:
        console.print("no drift scores yet: a worker scores each hour once it has labelled "
                      f"{s.drift.min_events} reviews in it, for a model with a reference profile")
        return
    mix = ", ".join(f"{k} {v:.2f}" for k, v in reference["label_mix"].items())
    console.print(f"reference: model {markup_safe(reference['version'])}, predicted mix {mix}, mean confidence "
                  f"{reference['mean_confidence']:.3f} ({reference['rows']} {markup_safe(reference['source'])} rows); "
                  f"threshold {s.drift.threshold:g}")
    table = Table(title="drift per hour (UTC, by review time)")
    for col in ("hour", "reviews", "negative", "neutral", "positive", "confidence", "label PSI", "conf. drop",
                "score", ""):
        table.add_column(col, justify="right")
    for start, score in counters.read_drift(hours):
        if score is None:
            continue
        m = score["label_mix"]
        table.add_row(start.strftime("%Y-%m-%d %H:00"), str(score["events"]), *(f"{m[k]:.2f}" for k in m),
                      f"{score['mean_confidence']:.3f}", f"{score['label_psi']:.3f}",
                      f"{score['confidence_drop']:+.3f}", f"{score['score']:.3f}",
                      "DRIFT" if score["score"] > score["threshold"] else "")
    console.print(table)


@drift_app.command("profile")
def drift_profile(
    model_dir: Annotated[Path, typer.Argument(help="Hugging Face model directory, or a run dir or run id in the "
                                                   "models home")],
    data: Annotated[str, typer.Argument(help="labelled data like the training data (CSV, JSONL, TweetEval dir)")],
    split: Annotated[str, typer.Option(help="TweetEval split to use")] = "validation",
) -> None:
    """Write a model's drift reference (reference_profile.json) from data like its training data.

    Models trained by `sentiment train` already have one; this is for models trained elsewhere.

    Example: sentiment drift profile path/to/model reviews.csv
    """
    from sentiment_model.artifact import find_model_dir
    from sentiment_model.predictor import predictor_from_settings
    from sentiment_model.profile import ReferenceProfile
    from training.data import load_split_file
    from training.evaluate import RAW

    model_dir = find_model_dir(get_settings().find_in_models_home(model_dir))  # ModelNotFoundError: one line
    rows = load_split_file(data, split=split, cleaning=RAW)  # the predictor applies the model's cleaning
    predictor = predictor_from_settings(get_settings().model, model_dir)
    profile = ReferenceProfile.from_probabilities(predictor.predict_probs(rows.texts).tolist(),
                                                  training_counts=rows.counts(), source=f"{data} ({split})")
    console.print(f"wrote {profile.write(model_dir)}: predicted mix "
                  + ", ".join(f"{k} {v:.3f}" for k, v in profile.label_mix.items())
                  + f", mean confidence {profile.mean_confidence:.3f} over {profile.rows} rows")


app.add_typer(drift_app, name="drift")

