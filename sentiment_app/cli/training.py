"""``sentiment train | sweep | evaluate | calibrate | experiments``: the training commands.

``app`` is a ``typer.Typer`` the root CLI (``sentiment_app.cli``) mounts; every command is also a plain
function with real defaults (``train("configs/demo.yaml")`` works from Python). User errors
(``sentiment_model.errors.UserError``: bad config, bad data, no model) propagate: the root CLI prints them
on one line and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from sentiment_app.cli.root import UserErrorsExit2
from sentiment_app.terminal_text import PlainTable as Table  # every cell literal, no control characters
from sentiment_app.terminal_text import markup_safe

app = typer.Typer(cls=UserErrorsExit2, help="Fine-tune, compare and evaluate sentiment models.",
                  no_args_is_help=True, pretty_exceptions_enable=False)  # the root mounts its commands
console = Console(width=max(Console().width, 150))  # run tables are wide; logs should not fold them

RunRoot = Annotated[Path | None, typer.Option(
    "--run-root", help="where run directories go [default: SENTIMENT_MODELS_DIR/runs, the models home]")]


def runs_dir(run_root: Path | None) -> Path:
    """``--run-root``, else the models home's runs/: the same folder from any working directory."""
    from stream.settings import get_settings

    return run_root or get_settings().runs_dir()


def model_arg(path: Path) -> Path:
    """A model or run directory as given, else found in the models home (``runs/<run_id>`` from any folder)."""
    from stream.settings import get_settings

    return get_settings().find_in_models_home(path)


TrackerCsv = Annotated[
    Path | None, typer.Option("--tracker", help="experiment CSV [default: RUN_ROOT/experiments.csv]")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a config key, e.g. --set learning_rate=2e-5 --set data.max_train_samples=500"),
]


SUMMARY_COLUMNS = ["run_id", "name", "learning_rate", "freeze_layers", "class_weights", "pooling", "val_macro_recall",
                   "test_accuracy", "test_macro_f1", "test_macro_recall", "train_samples_per_s", "train_time_s",
                   "wall_time_s"]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set {item!r}: expected KEY=VALUE, e.g. learning_rate=2e-5")
        out[key.strip()] = yaml.safe_load(value)
    return out


HEADERS = {"run_id": "run", "learning_rate": "lr", "freeze_layers": "frozen", "class_weights": "weights",
           "val_macro_recall": "val mRec", "test_accuracy": "test acc", "test_macro_f1": "test mF1",
           "test_macro_recall": "test mRec", "train_samples_per_s": "train/s", "wall_time_s": "wall s"}


def _summary_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in HEADERS:
        table.add_column(HEADERS[col], justify="left" if col in ("run_id", "class_weights") else "right",
                         no_wrap=True)
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in HEADERS])
    return table


def _cell(value: Any) -> str:
    if value in (None, ""):
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number.is_integer() and abs(number) >= 1:
        return str(int(number))
    return f"{number:.4g}" if abs(number) < 1e-2 else f"{number:.4f}".rstrip("0").rstrip(".")


DOMAIN_HEADERS = {"domain": "domain", "name": "model", "seed": "seed", "run_id": "run", "rows": "test rows",
                  "over_window": "over window", "macro_f1": "mF1", "macro_recall": "mRec", "accuracy": "acc"}


def markdown_table(rows: list[dict[str, Any]], cols: list[str] = SUMMARY_COLUMNS,
                   headers: dict[str, str] | None = None) -> str:
    headers = headers or {}
    lines = ["| " + " | ".join(headers.get(c, c.replace("_", " ")) for c in cols) + " |",
             "|" + "|".join(" --- " if c in ("run_id", "name", "class_weights", "domain") else " ---: "
                            for c in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="experiment YAML (see configs/)")],
    run_root: RunRoot = None,
    tracker: TrackerCsv = None,
    set_: SetOpt = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="continue this run id from its latest checkpoint")
    ] = None,
) -> None:
    """Fine-tune one experiment config and write its run directory.

    Example: sentiment train configs/baseline.yaml --set learning_rate=2e-5
    """
    from training.config import load_config
    from training.train import run_experiment

    cfg = load_config(config, parse_overrides(set_))
    console.print(f"[bold]train[/bold] {markup_safe(cfg.name)}: {markup_safe(cfg.base_model)}, "
                  f"lr {cfg.learning_rate:g}, freeze {cfg.freeze_layers}, class weights {cfg.class_weights}")
    result = run_experiment(cfg, runs_dir(run_root), run_id=resume, resume=resume is not None, tracker_csv=tracker)
    t = result.test or result.validation
    scope = "test" if result.test else "validation"
    console.print(f"[bold]{markup_safe(result.run_id)}[/bold] {scope}: accuracy {t['accuracy']:.4f}, "
                  f"macro-F1 {t['macro_f1']:.4f}, "
                  f"macro recall {t['macro_recall']:.4f} (validation macro recall "
                  f"{result.validation['macro_recall']:.4f}, best step {result.best_step})")
    console.print(f"training {result.timing['train_samples_per_s']} samples/s, wall {result.timing['wall_time_s']} s")
    fitted = result.validation.get("calibration_note") or "fitted on validation"
    console.print(f"scores calibrated: temperature {result.validation['temperature']:.3f} ({fitted}), "
                  f"{scope} ECE {t['ece_before']:.4f} -> {t['ece_after']:.4f}; see "
                  f"{markup_safe(result.run_dir / 'reliability.png')}")
    console.print(f"run dir: {result.run_dir}\nmodel:   {result.model_dir}")


@app.command()
def sweep(
    source: Annotated[Path, typer.Argument(help="a folder of experiment YAMLs, or a sweep file with base + grid/runs")],
    run_root: RunRoot = None,
    tracker: TrackerCsv = None,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate and list the runs, train nothing")] = False,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="continue after a failed run")] = False,
) -> None:
    """Run several configs in order and print how they compare.

    Example: sentiment sweep configs/sweep.yaml --set data.max_train_samples=2000
    """
    from training.sweep import expand_sweep
    from training.train import run_experiment

    configs = expand_sweep(source, parse_overrides(set_))
    console.print(f"[bold]sweep[/bold] {markup_safe(source)}: {len(configs)} runs: "
                  + markup_safe(", ".join(c.name for c in configs)))
    if dry_run:
        return
    rows: list[dict[str, Any]] = []
    for i, cfg in enumerate(configs, start=1):
        console.rule(f"run {i}/{len(configs)}: {markup_safe(cfg.name)}")
        try:
            rows.append(run_experiment(cfg, runs_dir(run_root), tracker_csv=tracker).row)
        except Exception as err:  # noqa: BLE001 - report and optionally continue with the next config
            console.print(f"{cfg.name} failed: {err}", style="red", markup=False, soft_wrap=True)
            if not keep_going:
                raise typer.Exit(code=1) from None
    rows.sort(key=lambda r: -(r["test_macro_recall"] or 0))
    console.print(_summary_table(rows, f"sweep {source} (best test macro recall first)"))


@app.command()
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="saved model directory (a run's model/)")],
    data: Annotated[str, typer.Argument(help="labelled CSV/JSONL file or TweetEval folder (shared:... works)")],
    split: Annotated[str, typer.Option(help="split to score when DATA is a TweetEval folder")] = "test",
    format: Annotated[str, typer.Option("--format", help="auto, csv, jsonl or tweeteval")] = "auto",
    text_column: Annotated[str, typer.Option(help="column holding the text")] = "text",
    label_column: Annotated[str, typer.Option(help="column holding the label")] = "label",
    label_map: Annotated[str | None, typer.Option(help="raw=class pairs, e.g. 'bad=negative,good=positive'")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="texts per forward pass [default: SENTIMENT_MODEL__BATCH_SIZE]")] = None,
    out: Annotated[Path | None, typer.Option(help="write metrics.json, report and confusion matrix here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON")] = False,
) -> None:
    """Score a saved model on any labelled file.

    Example: sentiment evaluate runs/<run>/model shared:tweeteval_sentiment --split test
    """
    from training.evaluate import DataSpec, evaluate_model

    mapping = None
    if label_map:
        mapping = dict(pair.split("=", 1) for pair in label_map.split(",") if "=" in pair)
    spec = DataSpec(path=data, format=format, text_column=text_column, label_column=label_column,
                    label_map=mapping, split=split)
    result = evaluate_model(model_arg(model_dir), spec, batch_size=batch_size, out_dir=out)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table(title=f"{model_dir} on {data} ({result['rows']} rows)")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="right")
    for name, s in result["per_class"].items():
        table.add_row(name, f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}", str(s["support"]))
    console.print(table)
    console.print(f"accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
                  f"macro recall {result['macro_recall']:.4f}  ({result['samples_per_s']} texts/s)")
    over, within = result["by_window"]["over_window"], result["by_window"]["within_window"]
    if over["rows"]:
        console.print(f"over the {result['max_length']}-token window ({result['long_text']['strategy']}): "
                      f"{over['rows']} rows, macro-F1 {over['macro_f1']:.4f}; the other {within['rows']} rows: "
                      f"macro-F1 {within.get('macro_f1', float('nan')):.4f}")


@app.command()
def domains(
    model_dir: Annotated[Path, typer.Argument(help="saved model directory (a run's model/) or its run directory")],
    config: Annotated[Path, typer.Argument(help="experiment YAML whose data section names the sets to score")],
    run_root: RunRoot = None,
    tracker: TrackerCsv = None,
    batch_size: Annotated[int | None, typer.Option(
        help="texts per forward pass [default: SENTIMENT_MODEL__BATCH_SIZE]")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="score only this source (repeatable)")] = None,
) -> None:
    """Score a saved model on the test split of every source in CONFIG's data section, one tracker row per
    domain (shown by `sentiment experiments` beside the models trained on that mixture).

    Example: sentiment domains runs/<run>/model configs/general.yaml --only sst --only tse
    """
    from sentiment_model.artifact import RunInfo, find_model_dir
    from training.config import ConfigError, load_config
    from training.evaluate import evaluate_domains
    from training.tracker import append_domain_rows

    data_cfg = load_config(config).data
    if only:
        unknown = sorted(set(only) - {s.name for s in data_cfg.sources or []})
        if unknown:
            raise ConfigError(f"--only {', '.join(unknown)}: no such source in {config}'s data.sources")
        data_cfg = data_cfg.model_copy(update={"sources": [s for s in data_cfg.sources or [] if s.name in only]})
    model = find_model_dir(model_arg(model_dir))
    scores = evaluate_domains(model, data_cfg, batch_size=batch_size)
    info = RunInfo.read(model)
    run = {"run_id": info.run_id or model.name, "name": info.config.get("name", model.name),
           "seed": info.config.get("seed")}
    append_domain_rows(tracker or runs_dir(run_root) / "experiments.csv", run, {"test": scores}, str(config))
    table = Table(title=f"{model} on the test splits of {config}")
    for col in ("domain", "rows", "over window", "accuracy", "macro-F1", "macro recall"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for name, m in scores.items():
        table.add_row(name, str(m["rows"]), str(m["over_window"]), f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}",
                      f"{m['macro_recall']:.4f}")
    console.print(table)


@app.command()
def calibrate(
    run_dir: Annotated[Path, typer.Argument(help="a training run directory (runs/<run_id>) or a model directory")],
    config: Annotated[Path | None, typer.Option(
        "--config", help="experiment YAML whose data section gives the validation split "
        "[default: the config the model was trained with]")] = None,
    test: Annotated[str | None, typer.Option(
        "--test", help="labelled CSV/JSONL (text, label) to score instead of the config's test split")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="texts per forward pass [default: SENTIMENT_MODEL__BATCH_SIZE]")] = None,
) -> None:
    """Fit the score temperature of a trained model on its validation split, without retraining.

    Writes T into the model's training_run.json (atomically; the predictor divides the logits by it, labels
    never change), calibration.json and reliability.png into the run directory, and prints the expected
    calibration error (15 equal-width confidence bins) before and after on validation and test.

    Example: sentiment calibrate runs/<run_id> --test tests/data/obvious_reviews.csv
    """
    from training.calibration import calibrate_saved_model
    from training.config import load_config
    from training.evaluate import DataSpec

    cfg = load_config(config) if config else None
    held_out = DataSpec(path=test) if test else None
    cal, out_dir = calibrate_saved_model(model_arg(run_dir), cfg, held_out, batch_size=batch_size)
    table = Table(title=f"calibration of {run_dir}: temperature {cal.temperature:.4f}")
    for col in ("split", "rows", "ECE before", "ECE after", "NLL before", "NLL after", "data"):
        table.add_column(col, justify="left" if col in ("split", "data") else "right")
    for split, s in cal.scores.items():
        table.add_row(split, str(s["rows"]), f"{s['ece_before']:.4f}", f"{s['ece_after']:.4f}",
                      f"{s['nll_before']:.4f}", f"{s['nll_after']:.4f}", cal.data.get(split, ""))
    console.print(table)
    if cal.note:
        console.print(cal.note)
    console.print(f"temperature saved in the model; reliability diagram: {out_dir / 'reliability.png'}")


@app.command()
def experiments(
    run_root: RunRoot = None,
    tracker: TrackerCsv = None,
    plot: Annotated[bool, typer.Option("--plot", help="also write a bar chart of the main test metrics")] = False,
    plot_path: Annotated[Path | None, typer.Option(help="PNG path [default: next to the CSV]")] = None,
    last: Annotated[int | None, typer.Option(help="only the last N runs")] = None,
    markdown: Annotated[Path | None, typer.Option(help="also write the table as Markdown to this file")] = None,
) -> None:
    """List tracked runs as a table (and optionally plot them).

    Example: sentiment experiments --plot --last 6
    """
    from training.tracker import domain_table_rows, domains_csv, plot_runs, read_runs

    csv_path = tracker or runs_dir(run_root) / "experiments.csv"
    rows = read_runs(csv_path)
    if not rows:
        console.print(f"no runs recorded in {csv_path}; train one with `sentiment train configs/demo.yaml`")
        return
    if last:
        rows = rows[-last:]
    console.print(_summary_table(rows, f"experiments ({csv_path})"))
    per_domain = domain_table_rows(read_runs(domains_csv(csv_path)), [r["run_id"] for r in rows])
    if per_domain:
        table = Table(title=f"test score per domain ({domains_csv(csv_path)})")
        for col, head in DOMAIN_HEADERS.items():
            table.add_column(head, justify="left" if col in ("domain", "name", "run_id") else "right", no_wrap=True)
        for row in per_domain:
            table.add_row(*[_cell(row.get(c)) for c in DOMAIN_HEADERS])
        console.print(table)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        text = markdown_table(rows)
        if per_domain:
            text += "\n" + markdown_table(per_domain, list(DOMAIN_HEADERS), DOMAIN_HEADERS)
        markdown.write_text(text, encoding="utf-8")
        console.print(f"markdown: {markdown}")
    if plot:
        png = plot_runs(rows, plot_path or csv_path.with_suffix(".png"))
        console.print(f"plot: {png}")

