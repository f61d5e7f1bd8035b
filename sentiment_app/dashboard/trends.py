"""Live trends: label counts and shares per minute or hour from the Redis counters, with a negative alert,
and the drift of each hour from the serving model's reference (scored by the workers, kept in Redis)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import altair as alt
import pandas as pd
import streamlit as st

from sentiment_app.dashboard.ui import COLORS, counters, load_settings, reaching, show_unavailable
from sentiment_model.labels import LABELS
from storage.trends import HOUR, MINUTE, TrendBucket
from stream.services import ServiceUnavailable
from stream.settings import Settings

RESOLUTIONS = {"minute": MINUTE, "hour": HOUR}
DEFAULT_THRESHOLD = 0.4  # negative share above which the page raises an alert
REFRESH_CHOICES = {"off": None, "5 s": 5, "10 s": 10, "30 s": 30, "60 s": 60}


@dataclass(frozen=True)
class View:
    """What the sidebar asked for; passed whole to the auto-refreshing fragment."""

    resolution: str
    buckets: int
    source: str | None
    threshold: float
    alert_window: int
    min_reviews: int


@dataclass(frozen=True)
class Alert:
    share: float
    negative: int
    total: int


def trend_frame(buckets: Sequence[TrendBucket]) -> pd.DataFrame:
    """One row per bucket, oldest first: the count of each label, the total and each label's share
    (NaN for an empty bucket, so charts show a gap rather than a false 0 %)."""
    frame = pd.DataFrame([{"bucket": b.start, **b.counts} for b in buckets], columns=["bucket", *LABELS])
    frame = frame.set_index("bucket").astype(int)
    frame["total"] = frame[list(LABELS)].sum(axis=1)
    for label in LABELS:
        frame[f"{label} share"] = frame[label] / frame["total"].where(frame["total"] > 0)
    return frame


def trend_chart(frame: pd.DataFrame, measure: str) -> alt.Chart:
    """Stacked bars of the counts, or lines of the shares with a dot per bucket (a lone busy minute between
    empty ones has no line to draw); labels keep their colours on every chart."""
    cols = {label: label if measure == "count" else f"{label} share" for label in LABELS}
    long = frame[list(cols.values())].rename(columns={v: k for k, v in cols.items()}).reset_index()
    long = long.melt("bucket", var_name="label", value_name=measure).dropna()
    color = alt.Color("label:N", scale=alt.Scale(domain=list(COLORS), range=list(COLORS.values())))
    base = alt.Chart(long, height=260, title="reviews per label" if measure == "count" else "share of each label")
    x = alt.X("bucket:T", title=None)
    if measure == "count":
        y = alt.Y("count:Q", stack=True, title="reviews")
        return base.mark_bar().encode(x=x, y=y, color=color, tooltip=["bucket:T", "label:N", "count:Q"])
    y = alt.Y("share:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1]), title="share")
    tooltip = ["bucket:T", "label:N", alt.Tooltip("share:Q", format=".0%")]
    return base.mark_line(point=True).encode(x=x, y=y, color=color, tooltip=tooltip)


def window_counts(frame: pd.DataFrame, last: int | None = None) -> dict[str, int]:
    """Reviews per label (and ``total``) over the last ``last`` buckets, or all of them."""
    tail = frame if last is None else frame.tail(last)
    return {col: int(tail[col].sum()) for col in (*LABELS, "total")}


def negative_alert(frame: pd.DataFrame, window: int, threshold: float, min_reviews: int) -> Alert | None:
    """An alert when the negative share of the last ``window`` buckets is above ``threshold``; a handful
    of reviews proves nothing, so fewer than ``min_reviews`` never alert."""
    counts = window_counts(frame, window)
    if counts["total"] < max(min_reviews, 1):
        return None
    share = counts["negative"] / counts["total"]
    return Alert(share, counts["negative"], counts["total"]) if share > threshold else None


def _sidebar(settings: Settings) -> View:
    sb = st.sidebar
    name = sb.radio("resolution", list(RESOLUTIONS), horizontal=True, key="trend_resolution")
    resolution = RESOLUTIONS[name]
    minute = resolution == MINUTE
    buckets = sb.slider(f"{name}s shown", 5, 180 if minute else 72 * 2, 60 if minute else 48, key=f"buckets_{name}")
    with reaching("Redis", counters(settings)[1]):
        sources = counters(settings)[0].sources(resolution, buckets)
    source = sb.selectbox("source", ["all sources", *sources], key="trend_source")
    sb.divider()
    threshold = sb.slider("alert when the negative share is above", 0.0, 1.0, DEFAULT_THRESHOLD, 0.05,
                          key="alert_threshold")
    window = sb.slider(f"alert window ({name}s)", 1, 60, 15 if minute else 3, key=f"alert_window_{name}")
    min_reviews = int(sb.number_input("minimum reviews for an alert", 1, 100_000, 10, key="alert_min_reviews"))
    return View(resolution, buckets, None if source == "all sources" else source, threshold, window, min_reviews)


def live_view(settings: Settings, view: View) -> None:
    """The part that re-runs on its own every few seconds: read Redis, draw banner, metrics, charts, table."""
    try:
        trend_counters, address = counters(settings)
        with reaching("Redis", address):
            frame = trend_frame(trend_counters.read(view.resolution, view.buckets, source=view.source))
    except ServiceUnavailable as e:
        show_unavailable(e)
        return
    unit = "minute" if view.resolution == MINUTE else "hour"
    alert = negative_alert(frame, view.alert_window, view.threshold, view.min_reviews)
    if alert:
        st.error(f"**Negative share {alert.share:.0%}** over the last {view.alert_window} {unit}(s) "
                 f"({alert.negative} of {alert.total} reviews) is above the {view.threshold:.0%} threshold.",
                 icon=":material/warning:")
    counts = window_counts(frame)
    columns = st.columns(4)
    columns[0].metric(f"reviews, last {view.buckets} {unit}s", f"{counts['total']:,}")
    for column, label in zip(columns[1:], LABELS, strict=True):
        share = counts[label] / counts["total"] if counts["total"] else 0.0
        column.metric(f"{label} ({share:.0%})", f"{counts[label]:,}")
    left, right = st.columns(2)
    left.altair_chart(trend_chart(frame, "count"), width="stretch")
    right.altair_chart(trend_chart(frame, "share"), width="stretch")
    table = frame.iloc[::-1].reset_index()
    table["bucket"] = table["bucket"].dt.strftime("%Y-%m-%d %H:%M" if view.resolution == MINUTE else "%Y-%m-%d %H:00")
    st.dataframe(table[["bucket", *LABELS, "total", "negative share"]], hide_index=True, height=300,
                 column_config={"negative share": st.column_config.NumberColumn(format="percent")})
    st.caption(f"Buckets in UTC by review time; read {datetime.now(UTC):%H:%M:%S} UTC from Redis at `{address}`.")
    drift_view(trend_counters)


def drift_frame(scores: Sequence[tuple[datetime, dict | None]]) -> pd.DataFrame:
    """One row per scored hour, oldest first (hours without a score are left out)."""
    rows = [{"hour": start, **{k: s[k] for k in ("events", "score", "label_psi", "confidence_drop",
                                                  "mean_confidence", "threshold")},
             **{f"{k} share": v for k, v in s["label_mix"].items()}} for start, s in scores if s is not None]
    return pd.DataFrame(rows)


def drift_view(trend_counters, hours: int = 48) -> None:
    """The workers' per-hour drift scores against the serving model's reference (``stream.drift``)."""
    st.subheader("Drift from the model's reference")
    reference = trend_counters.drift_reference()
    frame = drift_frame(trend_counters.read_drift(hours))
    if reference is None or frame.empty:
        st.info(f"No drift scores in the last {hours} hours: a worker scores an hour once it has labelled enough "
                "reviews in it (`SENTIMENT_DRIFT__MIN_EVENTS`), for a model trained by `sentiment train`.",
                icon=":material/info:")
        return
    last = frame.iloc[-1]
    if last["score"] > last["threshold"]:
        st.warning(f"**Drift {last['score']:.2f}** in the hour of {last['hour']:%Y-%m-%d %H:00} UTC is above the "
                   f"{last['threshold']:g} threshold: the label mix or the model's confidence moved away from what "
                   f"model `{reference['version']}` saw in training. Consider `sentiment refresh`.",
                   icon=":material/trending_up:")
    columns = st.columns(4)
    columns[0].metric("drift score, latest hour", f"{last['score']:.3f}",
                      f"{last['score'] - last['threshold']:+.3f} vs threshold", delta_color="inverse")
    columns[1].metric("label-mix PSI", f"{last['label_psi']:.3f}")
    columns[2].metric("confidence drop", f"{last['confidence_drop']:+.3f}")
    columns[3].metric("reviews in that hour", f"{int(last['events']):,}")
    line = alt.Chart(frame, height=220, title="drift score per hour").mark_line(point=True).encode(
        x=alt.X("hour:T", title=None), y=alt.Y("score:Q", title="score"),
        tooltip=["hour:T", "events:Q", alt.Tooltip("score:Q", format=".3f"), alt.Tooltip("label_psi:Q", format=".3f"),
                 alt.Tooltip("confidence_drop:Q", format="+.3f")])
    rule = alt.Chart(pd.DataFrame({"threshold": [float(last["threshold"])]})).mark_rule(strokeDash=[4, 4]).encode(
        y="threshold:Q")
    st.altair_chart(line + rule, width="stretch")
    mix = ", ".join(f"{k} {v:.0%}" for k, v in reference["label_mix"].items())
    st.caption(f"Reference: model `{reference['version']}` predicts {mix} with mean confidence "
               f"{reference['mean_confidence']:.2f} on its {reference['rows']:,} {reference['source']} rows. "
               "Score = label-mix PSI + drop in mean confidence.")


def render() -> None:
    st.title("Live trends")
    settings = load_settings()
    try:
        view = _sidebar(settings)
    except ServiceUnavailable as e:
        show_unavailable(e)
        return
    every = REFRESH_CHOICES[st.sidebar.selectbox("auto-refresh", list(REFRESH_CHOICES), index=2, key="refresh")]
    st.fragment(live_view, run_every=every)(settings, view)
