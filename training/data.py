"""Labelled data: read CSV / JSON Lines / TweetEval pairs, map labels, clean, and split.

Labels always end up as ids 0/1/2 = negative/neutral/positive (``sentiment_model.labels.LABELS``), which is what the
saved model's ``id2label`` declares and what the streaming predictor expects.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from sentiment_model.cleaning import CleaningConfig, clean_text
from sentiment_model.errors import UserError
from sentiment_model.labels import LABEL_TO_ID, LABELS
from training.config import DataConfig, SourceConfig, SourceFields, SplitConfig
from training.paths import resolve_path

DEFAULT_LABEL_MAP = {**{name: name for name in LABELS}, "0": "negative", "1": "neutral", "2": "positive"}
TWEETEVAL_SPLITS = {"train": "train", "validation": "val", "test": "test"}


class DataError(UserError):
    """Data that cannot be used; the message names the file and the rows or columns at fault."""


@dataclass
class Split:
    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)  # row i's source in a mixture; empty for one source

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> dict[str, int]:
        c = Counter(self.labels)
        return {name: c.get(i, 0) for i, name in enumerate(LABELS)}

    def domain_rows(self) -> dict[str, list[int]]:
        """Row indices per source, in first-seen order (empty when the rows carry no source)."""
        index: dict[str, list[int]] = {}
        for i, name in enumerate(self.domains):
            index.setdefault(name, []).append(i)
        return index

    def by_domain(self) -> dict[str, Split]:
        return {name: _take(self, rows) for name, rows in self.domain_rows().items()}


@dataclass
class LabelledData:
    train: Split
    validation: Split
    test: Split
    source: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "source": self.source,
            "splits": {n: {"rows": len(s), **s.counts()} for n, s in self.splits().items()},
            "notes": self.notes,
        }
        if self.train.domains:
            out["domains"] = {n: {d: {"rows": len(part), **part.counts()} for d, part in s.by_domain().items()}
                              for n, s in self.splits().items()}
        return out

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


@dataclass
class RawRows:
    """Rows as read, before label mapping: ``where[i]`` says where row i came from (for error messages)."""

    texts: list[str]
    labels: list[str]
    where: list[str]


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "tweeteval"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise DataError(f"{path}: cannot tell the format from the name; set data.format to csv, jsonl or tweeteval")


def read_csv(path: Path, text_column: str, label_column: str) -> RawRows:
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV: {err}") from None
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; columns present: {list(frame.columns)}. "
            "Set data.text_column / data.label_column."
        )
    n = len(frame)
    return RawRows(
        list(frame[text_column]), list(frame[label_column]), [f"{path.name} line {i + 2}" for i in range(n)]
    )


def read_jsonl(path: Path, text_column: str, label_column: str) -> RawRows:
    rows = RawRows([], [], [])
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object with {text_column!r} and {label_column!r}")
            missing = [c for c in (text_column, label_column) if c not in record]
            if missing:
                raise DataError(f"{where}: missing key(s) {missing}; keys present: {sorted(record)}")
            text = record[text_column]
            rows.texts.append("" if text is None else str(text))
            rows.labels.append(str(record[label_column]))
            rows.where.append(where)
    return rows


def read_tweeteval(folder: Path, split: str) -> RawRows:
    """``{split}_text.txt`` + ``{split}_labels.txt``, one item per line; lines are stripped (see data README)."""
    text_path, label_path = folder / f"{split}_text.txt", folder / f"{split}_labels.txt"
    for p in (text_path, label_path):
        if not p.is_file():
            raise DataError(f"{p}: missing; a TweetEval folder needs {split}_text.txt and {split}_labels.txt")
    texts = text_path.read_text(encoding="utf-8").split("\n")
    labels = label_path.read_text(encoding="utf-8").split("\n")
    if texts and texts[-1] == "":
        texts.pop()
    if labels and labels[-1] == "":
        labels.pop()
    if len(texts) != len(labels):
        raise DataError(f"{folder}: {split}_text.txt has {len(texts)} lines but {split}_labels.txt {len(labels)}")
    return RawRows(
        [t.strip() for t in texts], [x.strip() for x in labels], [f"{text_path.name} line {i + 1}" for i in
                                                                    range(len(texts))]
    )


def read_rows(path: Path, fmt: str, text_column: str, label_column: str, split: str = "train") -> RawRows:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "tweeteval":
        return read_tweeteval(path, TWEETEVAL_SPLITS.get(split, split))
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give a file, or set data.format: tweeteval")
    if fmt == "jsonl":
        return read_jsonl(path, text_column, label_column)
    return read_csv(path, text_column, label_column)


def normalise_label_map(label_map: dict[str, str] | None) -> dict[str, str]:
    source = DEFAULT_LABEL_MAP if label_map is None else label_map
    return {str(k).strip().lower(): v for k, v in source.items()}


def to_split(rows: RawRows, label_map: dict[str, str] | None, cleaning: CleaningConfig) -> Split:
    """Map raw labels to ids and clean texts; every unknown label and empty text is reported at once."""
    mapping = normalise_label_map(label_map)
    unknown: dict[str, list[str]] = {}
    empty: list[str] = []
    out = Split()
    for text, raw, where in zip(rows.texts, rows.labels, rows.where, strict=True):
        key = raw.strip().lower()
        if key not in mapping and key.endswith(".0") and key[:-2] in mapping:
            key = key[:-2]  # "1.0" from a float column
        name = mapping.get(key)
        if name is None:
            unknown.setdefault(raw, []).append(where)
            continue
        cleaned = clean_text(text, cleaning)
        if not cleaned.strip():
            empty.append(where)
            continue
        out.texts.append(cleaned)
        out.labels.append(LABEL_TO_ID[name])
    problems = []
    if unknown:
        listed = "; ".join(
            f"{label!r} ({len(w)} rows, first at {w[0]})" for label, w in sorted(unknown.items())[:10]
        )
        known = sorted(mapping)
        problems.append(
            f"unknown label(s): {listed}. Known: {known}. Declare them in data.label_map, "
            "e.g. {bad: negative, neutral: neutral, good: positive}"
        )
    if empty:
        problems.append(f"empty text in {len(empty)} row(s): {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}")
    if problems:
        raise DataError("\n".join(problems))
    return out


def dedup_key(text: str) -> str:
    """Texts equal after lower-casing and whitespace folding count as duplicates for splitting."""
    return " ".join(text.lower().split())


def _stratified(items: list[int], strata: list[int], size: int, seed: int) -> tuple[list[int], list[int]]:
    """Split off ``size`` items, stratified by ``strata`` when every class is big enough."""
    if size <= 0 or not items:
        return items, []
    try:
        return train_test_split(items, test_size=size, random_state=seed, stratify=strata)
    except ValueError:  # a class too small to stratify: fall back to a plain shuffled split
        return train_test_split(items, test_size=size, random_state=seed)


def split_grouped(data: Split, split: SplitConfig) -> tuple[Split, Split, Split]:
    """Stratified train/validation/test split where all copies of a text land in the same split."""
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(data.texts):
        groups.setdefault(dedup_key(text), []).append(i)
    members = list(groups.values())
    group_ids = list(range(len(members)))
    group_label = [data.labels[m[0]] for m in members]
    n_test, n_val = round(len(members) * split.test), round(len(members) * split.validation)
    rest, test_ids = _stratified(group_ids, group_label, n_test, split.seed)
    train_ids, val_ids = _stratified(rest, [group_label[g] for g in rest], n_val, split.seed)
    return tuple(_take(data, [i for g in sorted(ids) for i in members[g]]) for ids in (train_ids, val_ids, test_ids))


def _take(data: Split, indices: Iterable[int]) -> Split:
    indices = list(indices)
    domains = [data.domains[i] for i in indices] if data.domains else []
    return Split([data.texts[i] for i in indices], [data.labels[i] for i in indices], domains)


def concat(parts: Iterable[Split]) -> Split:
    out = Split()
    for part in parts:
        out.texts += part.texts
        out.labels += part.labels
        out.domains += part.domains
    return out


def subsample(data: Split, n: int | None, seed: int) -> Split:
    """A stratified subset of ``n`` rows (for quick runs); unchanged when ``n`` is None or too large."""
    if n is None or n >= len(data):
        return data
    idx = list(range(len(data)))
    keep, _ = _stratified(idx, data.labels, len(data) - n, seed)
    return _take(data, sorted(keep))


def load_split_file(
    path: str | Path,
    *,
    fmt: str = "auto",
    text_column: str = "text",
    label_column: str = "label",
    label_map: dict[str, str] | None = None,
    cleaning: CleaningConfig | None = None,
    split: str = "test",
) -> Split:
    """One labelled file (or one split of a TweetEval folder), mapped and cleaned."""
    rows = read_rows(resolve_path(path), fmt, text_column, label_column, split)
    return to_split(rows, label_map, cleaning or CleaningConfig())


def _read_splits(cfg: SourceFields, clean: CleaningConfig, where: str) -> tuple[Split, Split, Split, list[str], str]:
    """train, validation, test (uncapped), notes and a source description for one labelled set."""

    def read(path: str, split: str) -> Split:
        try:
            return load_split_file(
                path, fmt=cfg.format, text_column=cfg.text_column, label_column=cfg.label_column,
                label_map=cfg.label_map, cleaning=clean, split=split,
            )
        except DataError as err:
            raise DataError(f"{where}.{'path' if cfg.path else split} ({path}): {err}") from None

    notes: list[str] = []
    if cfg.path is not None:
        root = resolve_path(cfg.path)
        fmt = detect_format(root) if cfg.format == "auto" and root.exists() else cfg.format
        if fmt == "tweeteval":
            train, val, test = (read(cfg.path, s) for s in ("train", "validation", "test"))
            notes.append("splits as shipped with the data")
        else:
            train, val, test = split_grouped(read(cfg.path, "train"), cfg.split)
            notes.append(f"stratified grouped split val={cfg.split.validation} test={cfg.split.test} "
                         f"seed={cfg.split.seed}")
        source = str(root)
    else:
        assert cfg.train is not None
        train = read(cfg.train, "train")
        test = read(cfg.test, "test") if cfg.test else Split()
        if cfg.validation:
            val = read(cfg.validation, "validation")
        else:
            no_test = SplitConfig(validation=cfg.split.validation, test=0.0, seed=cfg.split.seed)
            train, val, _ = split_grouped(train, no_test)
            notes.append(f"validation carved from train ({cfg.split.validation}), grouped by text")
        if not cfg.test:
            train, test, _ = split_grouped(train, SplitConfig(validation=cfg.split.test, test=0.0,
                                                               seed=cfg.split.seed))
            notes.append(f"test carved from train ({cfg.split.test}), grouped by text")
        source = str(resolve_path(cfg.train))
    return train, val, test, notes, source


def _cap(train: Split, val: Split, cfg: SourceFields, seed: int, notes: list[str]) -> tuple[Split, Split]:
    if cfg.max_train_samples:
        train = subsample(train, cfg.max_train_samples, seed)
        notes.append(f"train capped at {len(train)} rows")
    if cfg.max_eval_samples:
        val = subsample(val, cfg.max_eval_samples, seed)
        notes.append(f"validation capped at {len(val)} rows")
    return train, val


def _check_not_empty(train: Split, val: Split, where: str) -> None:
    for name, part in (("train", train), ("validation", val)):
        if len(part) == 0:
            raise DataError(f"{where}: the {name} split is empty; give more data or change {where}.split")


def load_dataset(cfg: DataConfig) -> LabelledData:
    """Read the configured data and return train/validation/test splits (see ``DataConfig``)."""
    if cfg.sources:
        return load_mixture(cfg)
    train, val, test, notes, source = _read_splits(cfg, cfg.clean, "data")
    train, val = _cap(train, val, cfg, cfg.split.seed, notes)
    _check_not_empty(train, val, "data")
    overlap = {dedup_key(t) for t in train.texts} & {dedup_key(t) for t in val.texts + test.texts}
    if overlap:
        notes.append(f"{len(overlap)} texts appear both in train and in validation/test (as shipped)")
    return LabelledData(train, val, test, source, notes)


def reweight(data: Split, weight: float, seed: int) -> Split:
    """``weight`` x the rows: whole copies for the integer part, a stratified subsample for the rest."""
    copies, extra = int(weight), round((weight - int(weight)) * len(data))
    return concat([data] * copies + ([subsample(data, extra, seed)] if extra else []))


def load_mixture(cfg: DataConfig) -> LabelledData:
    """Several labelled sets as one: each row keeps its source as its domain (see ``DataConfig``).

    Every train text equal (``dedup_key``, after the shared cleaning) to a text in any source's validation
    or test split, capped or not, is dropped first, so no evaluation text is ever trained on; then each
    source's caps and weight apply.
    """
    assert cfg.sources
    read: dict[str, tuple[SourceConfig, Split, Split, Split, list[str], str]] = {}
    for src in cfg.sources:
        read[src.name] = (src, *_read_splits(src, cfg.clean, f"data.sources.{src.name}"))
    held_out = {dedup_key(t) for _, _, val, test, _, _ in read.values() for t in val.texts + test.texts}
    trains, vals, tests, notes = [], [], [], []
    for name, (src, train, val, test, src_notes, _) in read.items():
        keep = [i for i, t in enumerate(train.texts) if dedup_key(t) not in held_out]
        if len(keep) < len(train):
            src_notes.append(f"{len(train) - len(keep)} train rows dropped: text in an evaluation split")
            train = _take(train, keep)
        train, val = _cap(train, val, src, src.split.seed, src_notes)
        if src.weight != 1:
            train = reweight(train, src.weight, src.split.seed)
            src_notes.append(f"weight {src.weight:g}: {len(train)} train rows")
        _check_not_empty(train, val, f"data.sources.{name}")
        for part, out in ((train, trains), (val, vals), (test, tests)):
            out.append(Split(part.texts, part.labels, [name] * len(part)))
        notes += [f"{name}: {n}" for n in src_notes]
    train, val = _cap(concat(trains), concat(vals), cfg, cfg.split.seed, notes)
    source = "mixture: " + ", ".join(f"{name}={s}" for name, (*_, s) in read.items())
    return LabelledData(train, val, concat(tests), source, notes)
