"""Live trends: label counts and shares per minute or hour from the Redis counters, with a negative alert,
and the drift of each hour from the serving model's reference (scored by the workers, kept in Redis).

Every number on the page names the window it covers: the alert its own (a few buckets), the metrics the
buckets shown. The charts start at the first bucket with reviews, a spike is cut so the other bars stay
readable, and a share is drawn only over enough reviews to mean something.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from sentiment_app.dashboard.ui import COLORS, counters, load_settings, reaching, show_unavailable
from sentiment_app.terminal_text import markdown_literal
from sentiment_model.labels import LABELS
from storage.trends import HOUR, MINUTE, TrendBucket, TrendCounters
from stream.services import ServiceUnavailable
from stream.settings import Settings

RESOLUTIONS = {"minute": MINUTE, "hour": HOUR}
UNITS = {MINUTE: "minute", HOUR: "hour"}
TIME_UNITS = {MINUTE: "utcyearmonthdatehoursminutes", HOUR: "utcyearmonthdatehours"}  # one bar per bucket
# Minute ticks read 10:45; hour ticks 06:00, 12:00 ... and the date at midnight, so that more of them fit.
AXIS_LABELS = {MINUTE: "utcFormat(datum.value, '%H:%M')",
               HOUR: "utchours(datum.value) == 0 ? utcFormat(datum.value, '%d %b') : utcFormat(datum.value, '%H:00')"}
STAMPS = {MINUTE: "%Y-%m-%d %H:%M", HOUR: "%Y-%m-%d %H:00"}
DEFAULT_THRESHOLD = 0.4  # negative share above which the page raises an alert
MIN_SPAN = 6  # buckets a chart spans at least, so that a first burst of reviews is not one wide bar
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
    share_window: int = 1  # buckets each point of the share chart sums over
    share_min: int = 1  # fewer reviews than this in that window: no point
    cut_spikes: bool = True

    @property
    def unit(self) -> str:
        return UNITS[self.resolution]

    @property
    def read(self) -> int:
        """Buckets to read: those shown, the share window's reach before the first of them, the alert window."""
        return max(self.buckets + self.share_window - 1, self.alert_window)


@dataclass(frozen=True)
class Alert:
    share: float
    negative: int
    total: int


def trend_frame(buckets: Sequence[TrendBucket]) -> pd.DataFrame:
    """One row per bucket, oldest first: the count of each label, the total and each label's share
    (NaN for an empty bucket: it has no share)."""
    frame = pd.DataFrame([{"bucket": b.start, **b.counts} for b in buckets], columns=["bucket", *LABELS])
    frame = frame.set_index("bucket").astype(int)
    frame["total"] = frame[list(LABELS)].sum(axis=1)
    for label in LABELS:
        frame[f"{label} share"] = frame[label] / frame["total"].where(frame["total"] > 0)
    return frame


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


def share_frame(frame: pd.DataFrame, window: int, min_reviews: int) -> pd.DataFrame:
    """Each label's share of the reviews in the ``window`` buckets up to each bucket, NaN where those hold
    fewer than ``min_reviews``: a minute of 2 reviews swings from 0 % to 100 % and says nothing."""
    rolled = frame[list(LABELS)].rolling(max(window, 1), min_periods=1).sum()
    total = rolled.sum(axis=1)
    return rolled.div(total.where(total >= max(min_reviews, 1)), axis=0)


def spike_cap(totals: pd.Series) -> int | None:
    """A height for the count bars that one spike does not set: three times the upper quartile of the
    non-empty buckets, when a bucket rises above it (None: nothing to cut, or too few buckets to judge)."""
    busy = totals[totals > 0]
    if len(busy) < 4:
        return None
    cap = max(math.ceil(3 * float(busy.quantile(0.75))), 1)
    return cap if int(busy.max()) > cap else None


def visible(frame: pd.DataFrame, min_span: int = MIN_SPAN) -> pd.DataFrame:
    """The buckets from the first one with reviews (at least the last ``min_span``), so the charts span the
    data rather than the empty hours before it; empty when no bucket has a review."""
    busy = np.flatnonzero(frame["total"].to_numpy() > 0)
    if not len(busy):
        return frame.iloc[0:0]
    return frame.iloc[min(int(busy[0]), max(len(frame) - min_span, 0)):]


def _x(resolution: str, field: str = "bucket") -> alt.X:
    return alt.X(f"{field}:T", timeUnit=TIME_UNITS[resolution], title="UTC",
                 axis=alt.Axis(labelExpr=AXIS_LABELS[resolution], labelOverlap=True))


def _when(resolution: str) -> alt.Tooltip:
    return alt.Tooltip("bucket:T", timeUnit=TIME_UNITS[resolution], format=STAMPS[resolution],
                       title=f"{UNITS[resolution]} (UTC)")


def _color() -> alt.Color:
    return alt.Color("label:N", scale=alt.Scale(domain=list(COLORS), range=list(COLORS.values())))


def count_chart(frame: pd.DataFrame, resolution: str, cap: int | None = None) -> alt.Chart | alt.LayerChart:
    """Stacked bars of the reviews per label; with ``cap``, taller bars are cut there and their total is
    written above them, so one spike does not flatten every other bar."""
    long = frame[list(LABELS)].reset_index().melt("bucket", var_name="label", value_name="reviews")
    scale = alt.Scale(domain=[0, cap], clamp=True) if cap else alt.Scale()
    bars = alt.Chart(long).mark_bar(clip=True).encode(
        x=_x(resolution), y=alt.Y("reviews:Q", stack=True, scale=scale, title="reviews"), color=_color(),
        tooltip=[_when(resolution), "label:N", "reviews:Q"])
    title = alt.TitleParams(f"reviews per {UNITS[resolution]}", anchor="start")
    if cap is None:
        return bars.properties(height=260, title=title)
    over = frame.loc[frame["total"] > cap, ["total"]].reset_index().assign(top=cap)
    totals = alt.Chart(over).mark_text(baseline="bottom", dy=-3, fontWeight="bold").encode(
        x=_x(resolution), y=alt.Y("top:Q", title="reviews"), text="total:Q",
        tooltip=[_when(resolution), alt.Tooltip("total:Q", title="reviews (all labels)")])
    title = alt.TitleParams(f"reviews per {UNITS[resolution]}", anchor="start", offset=16,
                            subtitle=f"bars above {cap} are cut; the number is the real total")
    return (bars + totals).properties(height=260, title=title)


def share_chart(shares: pd.DataFrame, resolution: str, window: int, min_reviews: int) -> alt.Chart:
    """Lines of each label's share (over ``window`` buckets), a dot per point; a gap where too few reviews."""
    long = shares.reset_index().melt("bucket", var_name="label", value_name="share")
    unit = UNITS[resolution]
    over = f"each point: the last {window} {unit}s" if window > 1 else f"each point: one {unit}"
    return alt.Chart(long, height=260, title=alt.TitleParams(
        "share of each label", anchor="start", subtitle=f"{over}, shown with at least {min_reviews} reviews",
    )).mark_line(point=True).encode(
        x=_x(resolution), y=alt.Y("share:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1]),
                                  title="share"),
        color=_color(), tooltip=[_when(resolution), "label:N", alt.Tooltip("share:Q", format=".0%")])


def table_frame(frame: pd.DataFrame, resolution: str) -> pd.DataFrame:
    """The buckets newest first, as the table shows them: counts, and the negative share or blank when a
    bucket had no reviews."""
    table = frame.iloc[::-1].reset_index()
    table["bucket"] = table["bucket"].dt.strftime(STAMPS[resolution])
    table["negative share"] = [f"{v:.0%}" if pd.notna(v) else "" for v in table["negative share"]]
    return table[["bucket", *LABELS, "total", "negative share"]]


def since(start: datetime, resolution: str, now: datetime | None = None) -> str:
    """``since 10:45 UTC``, with the date when it is not today's."""
    now = now or datetime.now(UTC)
    fmt = "%H:%M" if resolution == MINUTE and start.date() == now.date() else "%d %b %H:%M"
    return f"since {start:{fmt}} UTC"


def _window(n: int, unit: str) -> str:
    return f"the last {n} {unit}" + ("s" if n != 1 else "")


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
    charts = sb.expander("chart options")
    cut = charts.checkbox("cut spikes in the bar chart", True, key="cut_spikes",
                          help="Bars far above the usual height are cut, their total written above them.")
    share_window = charts.slider(f"share over the last N {name}s", 1, 30, 5 if minute else 1,
                                 key=f"share_window_{name}")
    share_min = int(charts.number_input("share point needs at least N reviews", 1, 100_000, 10, key="share_min"))
    return View(resolution, buckets, None if source == "all sources" else source, threshold, window, min_reviews,
                share_window, share_min, cut)


def _alert_status(frame: pd.DataFrame, view: View) -> None:
    """The alert banner, or a line saying why there is none; both name the alert window."""
    window = min(view.alert_window, len(frame))
    where = f"{_window(window, view.unit)} ({since(frame.index[-window], view.resolution)})"
    alert = negative_alert(frame, window, view.threshold, view.min_reviews)
    if alert:
        st.error(f"**Negative share {alert.share:.0%}** over {where}: {alert.negative} of {alert.total} reviews, "
                 f"above the {view.threshold:.0%} threshold.", icon=":material/warning:")
        return
    counts = window_counts(frame, window)
    if counts["total"] < view.min_reviews:
        st.caption(f"No alert: {counts['total']} review(s) over {where}, fewer than the {view.min_reviews} an "
                   "alert needs.")
    else:
        st.caption(f"No alert: negative share {counts['negative'] / counts['total']:.0%} of {counts['total']} "
                   f"reviews over {where}, not above the {view.threshold:.0%} threshold.")


def live_view(settings: Settings, view: View) -> None:
    """The part that re-runs on its own every few seconds: read Redis, draw banner, metrics, charts, table."""
    try:
        trend_counters, address = counters(settings)
        with reaching("Redis", address):
            whole = trend_frame(trend_counters.read(view.resolution, view.read, source=view.source))
    except ServiceUnavailable as e:
        show_unavailable(e)
        return
    frame = whole.tail(view.buckets)
    _alert_status(whole, view)
    where = source_name(view.source)
    st.markdown(f"**Last {view.buckets} {view.unit}s** "
                f"({since(frame.index[0], view.resolution)}), {where}")
    counts = window_counts(frame)
    columns = st.columns(4)
    columns[0].metric(f"reviews, last {view.buckets} {view.unit}s", f"{counts['total']:,}")
    for column, label in zip(columns[1:], LABELS, strict=True):
        share = counts[label] / counts["total"] if counts["total"] else 0.0
        column.metric(f"{label} ({share:.0%})", f"{counts[label]:,}")
    shown = visible(frame)
    if shown.empty:
        st.info(f"No reviews in {_window(view.buckets, view.unit)} ({where}). Send some with "
                "`sentiment produce FILE.csv`, or pick a longer window or the hour resolution in the sidebar.",
                icon=":material/info:")
    else:
        shares = share_frame(whole, view.share_window, view.share_min).loc[shown.index]
        left, right = st.columns(2)
        left.altair_chart(count_chart(shown, view.resolution, spike_cap(shown["total"]) if view.cut_spikes
                                      else None), width="stretch")
        right.altair_chart(share_chart(shares, view.resolution, view.share_window, view.share_min),
                           width="stretch")
        st.dataframe(table_frame(shown, view.resolution), hide_index=True, height=300,
                     column_config={"bucket": f"{view.unit} (UTC)"})
    st.caption(f"Buckets in UTC by review time; read {datetime.now(UTC):%H:%M:%S} UTC from Redis at `{address}`.")
    drift_view(trend_counters, view.source)


def source_name(source: str | None) -> str:
    return "all sources" if source is None else f"source {markdown_literal(source)}"


def drift_frame(scores: Sequence[tuple[datetime, dict | None]]) -> pd.DataFrame:
    """One row per scored hour, oldest first (hours without a score are left out)."""
    rows = [{"hour": start, **{k: s[k] for k in ("events", "score", "label_psi", "confidence_drop",
                                                  "mean_confidence", "threshold")},
             **{f"{k} share": v for k, v in s["label_mix"].items()}} for start, s in scores if s is not None]
    return pd.DataFrame(rows)


def drift_view(trend_counters: TrendCounters, source: str | None = None, hours: int = 48) -> None:
    """The workers' per-hour drift scores against the serving model's reference (``stream.drift``). Workers
    score every source together, so the source filter cannot apply: the heading says so."""
    st.subheader("Drift from the model's reference (all sources)")
    if source is not None:
        st.caption(f"The source filter ({markdown_literal(source)}) does not apply here: workers score drift "
                   "over all sources together, per hour.")
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
        x=_x(HOUR, "hour"), y=alt.Y("score:Q", title="score"),
        tooltip=[alt.Tooltip("hour:T", timeUnit=TIME_UNITS[HOUR], format=STAMPS[HOUR], title="hour (UTC)"),
                 "events:Q", alt.Tooltip("score:Q", format=".3f"), alt.Tooltip("label_psi:Q", format=".3f"),
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
