"""Data mixtures (``data.sources``): config rules, loading, eval-text removal, weights and caps, and the
per-domain report of a run, on tiny models and small CSVs."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sentiment_app.cli.training import app
from training.config import ConfigError, config_from_dict, load_config
from training.data import DataError, dedup_key, load_dataset
from training.evaluate import evaluate_domains
from training.paths import shared_data_dir
from training.tiny import build_tiny_model, synthetic_rows
from training.tracker import domain_table_rows, domains_csv, read_runs
from training.train import run_experiment

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
REPO = Path(__file__).resolve().parent.parent


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def mixture(*sources: dict, **data) -> dict:
    return {"data": {"sources": list(sources), **data}}


# --- config ----------------------------------------------------------------------------------------------


def test_a_source_with_a_misspelt_key_is_named_with_its_index() -> None:
    with pytest.raises(ConfigError, match=r"data\.sources\.1\.wieght: unknown key"):
        config_from_dict(mixture({"name": "a", "path": "a.csv"}, {"name": "b", "path": "b.csv", "wieght": 2}))


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"sources": [{"name": "a", "path": "a.csv"}], "path": "x.csv"}, "set path inside each source"),
        ({"sources": [{"name": "a", "path": "a.csv"}, {"name": "a", "path": "b.csv"}]}, "names must be unique"),
        ({"sources": [{"name": "a"}]}, "needs `path`"),
        ({"sources": [{"name": "a b", "path": "a.csv"}]}, "name"),
        ({"sources": [{"name": "a", "path": "a.csv", "weight": 0}]}, "weight"),
        ({"sources": []}, "sources"),
    ],
)
def test_bad_mixtures_are_refused_with_the_reason(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config_from_dict({"data": data})


def test_single_source_configs_keep_their_meaning(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "d.csv", synthetic_rows(90, seed=3))
    data = load_dataset(config_from_dict({"data": {"path": str(f), "max_train_samples": 30}}).data)
    assert data.train.domains == [] and len(data.train) == 30 and "domains" not in data.summary()
    assert load_config(REPO / "configs" / "best.yaml").data.sources is None


# --- loading ---------------------------------------------------------------------------------------------


def two_sources(tmp_path: Path) -> tuple[Path, Path, Path]:
    a = write_csv(tmp_path / "a.csv", synthetic_rows(300, seed=1))
    b_train = write_csv(tmp_path / "b_train.csv", [
        *synthetic_rows(120, seed=2),
        ("Great  product &amp; fast", "positive"),  # equals a.csv's test text after cleaning
        ("the box was ok", "neutral"),  # equals b's own test text after cleaning
    ])
    b_test = write_csv(tmp_path / "b_test.csv", [("great product & fast", "positive"), ("The box was OK", "neutral"),
                                                  ("awful", "negative")])
    return a, b_train, b_test


def test_rows_keep_their_source_and_eval_texts_never_reach_train(tmp_path: Path) -> None:
    a, b_train, b_test = two_sources(tmp_path)
    cfg = config_from_dict(mixture(
        {"name": "a", "path": str(a), "split": {"validation": 0.2, "test": 0.2}},
        {"name": "b", "train": str(b_train), "test": str(b_test)},
        clean={"unescape": True},
    ))
    data = load_dataset(cfg.data)
    assert set(data.train.domains) == set(data.validation.domains) == set(data.test.domains) == {"a", "b"}
    assert len(data.test.by_domain()["b"]) == 3
    held = {dedup_key(t) for t in data.validation.texts + data.test.texts}
    assert not held & {dedup_key(t) for t in data.train.texts}
    assert "great product & fast" in data.test.texts and "the box was ok" in {dedup_key(t) for t in data.test.texts}
    assert any(n.startswith("b: 2 train rows dropped") for n in data.notes), data.notes
    summary = data.summary()["domains"]
    assert summary["test"]["b"]["rows"] == 3 and sum(d["rows"] for d in summary["train"].values()) == len(data.train)


def test_weights_and_caps_set_each_source_share(tmp_path: Path) -> None:
    a = write_csv(tmp_path / "a.csv", synthetic_rows(300, seed=1))
    b = write_csv(tmp_path / "b.csv", synthetic_rows(300, seed=2))
    split = {"validation": 0.1, "test": 0.1}
    base = [{"name": "a", "path": str(a), "split": split}, {"name": "b", "path": str(b), "split": split}]

    def train_rows(a_extra: dict, b_extra: dict, **data) -> dict[str, int]:
        cfg = config_from_dict(mixture({**base[0], **a_extra}, {**base[1], **b_extra}, **data))
        return {d: len(s) for d, s in load_dataset(cfg.data).train.by_domain().items()}

    plain = train_rows({}, {})
    assert plain == {"a": 240, "b": 240}
    assert train_rows({"weight": 2}, {"weight": 0.5}) == {"a": 480, "b": 120}
    assert train_rows({"weight": 1.5}, {"max_train_samples": 60}) == {"a": 360, "b": 60}
    assert train_rows({"max_train_samples": 100, "weight": 3}, {}) == {"a": 300, "b": 240}
    capped = train_rows({}, {}, max_train_samples=90)
    assert sum(capped.values()) == 90 and capped["a"] > 20 and capped["b"] > 20
    halved = load_dataset(config_from_dict(mixture({**base[0], "weight": 0.5}, base[1])).data).train.by_domain()["a"]
    assert halved.counts() == {"negative": 40, "neutral": 40, "positive": 40}  # stratified


def test_a_broken_source_is_named(tmp_path: Path) -> None:
    a = write_csv(tmp_path / "a.csv", synthetic_rows(60))
    bad = write_csv(tmp_path / "bad.csv", [("fine", "neutral"), ("meh", "excellent")])
    cfg = config_from_dict(mixture({"name": "a", "path": str(a)}, {"name": "shop", "path": str(bad)}))
    with pytest.raises(DataError, match=r"data\.sources\.shop\.path .*'excellent'"):
        load_dataset(cfg.data)


texts = st.text(alphabet="abcAB &;", min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(texts, st.sampled_from(["negative", "neutral", "positive"])), min_size=6, max_size=30),
       st.lists(texts, min_size=1, max_size=8))
def test_no_train_text_equals_an_eval_text_whatever_the_rows(train: list, eval_texts: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        a = write_csv(root / "a.csv", train)
        b_test = write_csv(root / "b_test.csv", [(t, "neutral") for t in eval_texts])
        b_train = write_csv(root / "b_train.csv", [*train, *[(t + " x", "positive") for t in eval_texts]])
        cfg = config_from_dict(mixture(
            {"name": "a", "train": str(a), "validation": str(b_test), "test": str(b_test)},
            {"name": "b", "train": str(b_train), "validation": str(a), "test": str(b_test)},
            clean={"unescape": True, "lowercase": False},
        ))
        try:
            data = load_dataset(cfg.data)
        except DataError as err:  # everything removed, or a text empty after cleaning: said, not crashed
            assert "empty" in str(err)
            return
        held = {dedup_key(t) for t in data.validation.texts + data.test.texts}
        assert not held & {dedup_key(t) for t in data.train.texts}
        assert len(data.train.domains) == len(data.train)


@pytest.mark.skipif(not (shared_data_dir() / "sst5").is_dir(), reason="shared data absent")
def test_general_mix_scores_every_published_test_split() -> None:
    data = load_dataset(load_config(REPO / "configs" / "general.yaml").data)
    sizes = {d: len(s) for d, s in data.test.by_domain().items()}
    assert sizes == {"tweeteval": 12284, "tse": 3534, "sst": 2210, "fin_news": 2388, "phrasebank": 517}
    held = {dedup_key(t) for t in data.validation.texts + data.test.texts}
    assert not held & {dedup_key(t) for t in data.train.texts}


# --- runs and reports ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixture")
    build_tiny_model(root / "model", "distilbert", n_layers=2)
    write_csv(root / "shop.csv", synthetic_rows(360, seed=1))
    long = [(" ".join([text] * 8), label) for text, label in synthetic_rows(120, seed=2)]  # > 32 tokens each
    write_csv(root / "hotel_train.csv", long[:90])
    write_csv(root / "hotel_test.csv", long[90:])
    return root


def tiny_mix(workdir: Path, **extra) -> dict:
    return {
        "name": "tiny-mix", "base_model": str(workdir / "model"), "max_length": 32, "batch_size": 16,
        "learning_rate": 2e-3, "warmup_ratio": 0.0, "epochs": 12, "eval_steps": 50, "save_top_k": 1,
        "num_threads": 1, "logging_steps": 10,
        **mixture({"name": "shop", "path": str(workdir / "shop.csv"), "split": {"validation": 0.1, "test": 0.2}},
                  {"name": "hotel", "train": str(workdir / "hotel_train.csv"),
                   "test": str(workdir / "hotel_test.csv"), "weight": 2}),
        **extra,
    }


@pytest.fixture(scope="module")
def mixed_run(workdir: Path):
    return run_experiment(config_from_dict(tiny_mix(workdir)), workdir / "runs")


def test_a_mixture_run_reports_every_domain(mixed_run) -> None:
    report = json.loads((mixed_run.run_dir / "domain_metrics.json").read_text())
    assert set(report) == {"validation", "test"}
    test = report["test"]
    assert {d: test[d]["rows"] for d in test} == {"shop": 72, "hotel": 30}
    assert test["hotel"]["over_window"] == 30 and test["shop"]["over_window"] == 0
    assert test["shop"]["macro_recall"] > 0.8 and test["hotel"]["accuracy"] > 0.6
    # each row is scored against its own source: the domains' accuracies add up to the pooled one
    pooled = sum(m["accuracy"] * m["rows"] for m in test.values()) / sum(m["rows"] for m in test.values())
    assert pooled == pytest.approx(mixed_run.test["accuracy"])
    info = json.loads((mixed_run.model_dir / "training_run.json").read_text())
    assert info["domain_metrics"] == report
    assert mixed_run.row["sources"] == "shop+hotelx2"
    data = json.loads((mixed_run.run_dir / "data.json").read_text())
    assert data["domains"]["train"]["hotel"]["rows"] == 2 * 81  # 90 minus the carved 10%, twice


def test_domains_command_puts_another_model_beside_the_mixture(mixed_run, workdir: Path) -> None:
    run_root = mixed_run.run_dir.parent
    single = run_experiment(config_from_dict({**tiny_mix(workdir), "name": "shop-only", "data": {
        "path": str(workdir / "shop.csv"), "split": {"validation": 0.1, "test": 0.2}}}), run_root)
    assert not (single.run_dir / "domain_metrics.json").exists()
    cfg = workdir / "mix.yaml"
    cfg.write_text(yaml.safe_dump(tiny_mix(workdir)))
    result = CliRunner().invoke(app, ["domains", str(single.run_dir), str(cfg), "--run-root", str(run_root)])
    assert result.exit_code == 0, result.output
    scored = evaluate_domains(single.model_dir, load_config(cfg).data)
    rows = read_runs(domains_csv(run_root / "experiments.csv"))
    mine = {r["domain"]: r for r in rows if r["run_id"] == single.run_id}
    assert set(mine) == {"shop", "hotel"} and mine["shop"]["scored_on"] == str(cfg)
    assert float(mine["hotel"]["macro_f1"]) == pytest.approx(scored["hotel"]["macro_f1"], abs=1e-5)
    own = json.loads((mixed_run.run_dir / "domain_metrics.json").read_text())["test"]
    assert {d: int(r["rows"]) for d, r in mine.items()} == {d: m["rows"] for d, m in own.items()}  # same rows

    table = domain_table_rows(rows)
    assert [r["domain"] for r in table[:4]] == ["shop", "shop", "hotel", "hotel"]
    means = {r["run_id"]: r for r in table if r["domain"].startswith("mean")}
    assert means[single.run_id]["macro_f1"] == pytest.approx(
        (scored["shop"]["macro_f1"] + scored["hotel"]["macro_f1"]) / 2, abs=1e-5)
    md = run_root / "runs.md"
    out = CliRunner().invoke(app, ["experiments", "--run-root", str(run_root), "--markdown", str(md)])
    assert out.exit_code == 0 and "test score per domain" in out.output
    assert "| mean (2 domains) | shop-only |" in md.read_text()


def test_domains_command_scores_only_the_sources_asked_for(mixed_run, workdir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "mix.yaml"
    cfg.write_text(yaml.safe_dump(tiny_mix(workdir)))
    args = ["domains", str(mixed_run.model_dir), str(cfg), "--run-root", str(tmp_path), "--only", "hotel"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [r["domain"] for r in read_runs(domains_csv(tmp_path / "experiments.csv"))] == ["hotel"]
    result = CliRunner().invoke(app, [*args[:-1], "spa"])
    assert result.exit_code == 2 and "--only spa: no such source" in result.output


def test_domains_command_names_a_bad_config(mixed_run, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {sources: [{name: a, path: nowhere.csv}]}\n")
    result = CliRunner().invoke(app, ["domains", str(mixed_run.model_dir), str(cfg), "--run-root", str(tmp_path)])
    assert result.exit_code == 2 and "data.sources.a" in result.output and "Traceback" not in result.output


def test_dashboard_lists_the_domains_of_the_tracked_runs(tmp_path: Path) -> None:
    from sentiment_app.dashboard.experiments import domain_frame
    from training.tracker import append_domain_rows

    csv_path = tmp_path / "experiments.csv"
    assert domain_frame(csv_path).empty
    for run_id, f1 in (("r1", 0.5), ("r2", 0.7)):
        append_domain_rows(csv_path, {"run_id": run_id, "name": run_id, "seed": 42}, {"test": {
            "tweets": {"rows": 10, "over_window": 0, "accuracy": f1, "macro_f1": f1, "macro_recall": f1},
            "reviews": {"rows": 5, "over_window": 2, "accuracy": 0.4, "macro_f1": 0.3, "macro_recall": 0.35}}})
    frame = domain_frame(csv_path)
    assert frame["domain"].tolist() == ["tweets", "tweets", "reviews", "reviews", "mean (2 domains)",
                                        "mean (2 domains)"]
    assert frame["macro_f1"].tolist() == [0.5, 0.7, 0.3, 0.3, 0.4, 0.5]


@pytest.mark.parametrize(("weight", "rows"), [(0.001, 0), (0.5, 5), (1.0, 10), (2.04, 20), (2.5, 25)])
def test_reweight_rounds_to_whole_rows(weight: float, rows: int) -> None:
    from training.data import Split, reweight

    data = Split([f"t{i}" for i in range(10)], [i % 3 for i in range(10)])
    out = reweight(data, weight, seed=0)
    assert len(out) == rows and set(out.texts) <= set(data.texts)
