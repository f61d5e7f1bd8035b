"""End to end in a real browser: `sentiment dashboard` as a subprocess against the running stack, driven
by Debian's chromium through Playwright (no Playwright browser download: `apt-get install chromium`).

Every page is photographed at 1400x900 (the viewport a laptop shows) into the test's tmp dir, and copied
into ``$SENTIMENT_SCREENSHOTS_DIR`` when that is set; ``<page>-full.png`` holds the whole page.
"""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sentiment_model.labels import LABELS
from storage.db import get_engine
from storage.reviews import LabelledReview, insert_reviews
from storage.trends import MINUTE
from stream.services import trend_counters
from stream.settings import Settings
from tests.support import REPO, free_port, settings_env, store, wait_until

CHROMIUM = Path(os.environ.get("SENTIMENT_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 900}
SHOTS = "SENTIMENT_SCREENSHOTS_DIR"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no chromium at {CHROMIUM}: `apt-get install -y chromium`"),
]


sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def dash_settings(settings: Settings) -> Settings:
    """This test's settings with the correction form on (a trusted test network)."""
    dashboard = settings.dashboard.model_copy(update={"corrections_enabled": True})
    return settings.model_copy(update={"dashboard": dashboard})


@pytest.fixture
def dashboard(dash_settings: Settings, tmp_path: Path) -> Iterator[str]:
    """`sentiment dashboard` on a free port with this test's settings; yields its URL."""
    port = free_port()
    log = (tmp_path / "dashboard.log").open("wb")
    env = {k: v for k, v in settings_env(dash_settings).items() if not k.startswith("STREAMLIT_")}
    proc = subprocess.Popen([sys.executable, "-m", "sentiment_app", "dashboard", "--port", str(port)], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url) or proc.poll() is not None, 60, "the dashboard to answer",
                   lambda: (tmp_path / "dashboard.log").read_text(errors="replace")[-3000:])
        assert proc.poll() is None, (tmp_path / "dashboard.log").read_text(errors="replace")[-3000:]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def seed_traffic(settings: Settings, source: str, now: datetime) -> None:
    """Reviews as a real stream leaves them: quiet minutes of 1-6 reviews, one spike of 300, a negative last
    quarter hour, and a few busier hours earlier in the day."""
    rng = random.Random(7)
    times: list[tuple[datetime, str]] = []
    this_minute = now.replace(second=0, microsecond=0)
    for minute in range(40, -1, -1):
        at, last_second = this_minute - timedelta(minutes=minute), 59 if minute else now.second
        weights = (5, 2, 3) if minute < 15 else (2, 2, 6)
        n = 300 if minute == 20 else rng.randint(1, 6)
        times += [(at + timedelta(seconds=rng.randint(0, last_second)), rng.choices(LABELS, weights)[0])
                  for _ in range(n)]
    for hour in range(5, 1, -1):
        at = now - timedelta(hours=hour)
        times += [(at - timedelta(minutes=rng.randint(0, 59)), rng.choices(LABELS, (2, 3, 5))[0])
                  for _ in range(rng.randint(40, 80))]
    reviews = [LabelledReview(f"{source}-{i:04d}", text, source, when, label, 0.8,
                              *[0.8 if label == k else 0.1 for k in LABELS], "tiny-test")
               for i, ((when, label), text) in enumerate(zip(times, _texts(rng, len(times)), strict=True))]
    stored = insert_reviews(get_engine(settings.postgres.url.get_secret_value()), reviews)
    counters = trend_counters(settings)
    counters.count(stored)
    reference = {"version": settings.model.version, "label_mix": {"negative": 0.3, "neutral": 0.2, "positive": 0.5},
                 "mean_confidence": 0.82, "rows": 2000, "source": "validation"}
    for hour, drift in zip(range(6, 0, -1), (0.04, 0.06, 0.05, 0.12, 0.21, 0.31), strict=True):
        counters.save_drift(now - timedelta(hours=hour), {
            "events": 400, "score": drift, "label_psi": drift * 0.7, "confidence_drop": drift * 0.3,
            "mean_confidence": 0.8, "threshold": 0.25, "label_mix": reference["label_mix"]}, reference)


def _texts(rng: random.Random, n: int) -> list[str]:
    openings = ["The parcel", "Customer service", "The new update", "Our room", "The pizza", "Checkout",
                "The battery", "Delivery"]
    endings = ["arrived two days late and the box was crushed.", "was friendly and sorted it out in minutes.",
               "is fine, nothing special.", "crashes every time I open the camera.", "exceeded expectations.",
               "took forever; nobody answered the phone."]
    return [f"{rng.choice(openings)} {rng.choice(endings)}" for _ in range(n)]


def seed_run(settings: Settings) -> Path:
    """A finished training run in the models home, with the figures training and calibration write."""
    import numpy as np

    from training.calibration import plot_reliability
    from training.metrics import plot_confusion
    from training.tracker import append_row

    run_dir = settings.runs_dir() / "20260101-120000-demo"
    run_dir.mkdir(parents=True)
    plot_confusion([[40, 6, 4], [7, 30, 8], [3, 5, 47]], run_dir / "confusion_matrix.png", "demo: test split")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    logits = rng.normal(0, 1, (400, 3)) + 3 * np.eye(3)[labels] * rng.random((400, 1))
    plot_reliability({"validation": (logits * 2, labels), "test": (logits * 2, labels)}, 0.5,
                     run_dir / "reliability.png", "demo: reliability")
    append_row(settings.runs_dir() / "experiments.csv", {
        "run_id": run_dir.name, "name": "demo", "base_model": "all-MiniLM-L6-v2", "test_accuracy": 0.78,
        "test_macro_f1": 0.77, "test_macro_recall": 0.77, "val_macro_f1": 0.79, "epochs": 8, "run_dir": run_dir})
    return run_dir


def shoot(page: object, tmp_path: Path, name: str) -> Path:
    """The 1400x900 view and the whole page, into the test's dir and ``$SENTIMENT_SCREENSHOTS_DIR``."""
    page.wait_for_timeout(800)  # type: ignore[attr-defined]  # charts finish drawing
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))  # type: ignore[attr-defined]
    full = tmp_path / f"{name}-full.png"
    height = page.evaluate(  # type: ignore[attr-defined]
        "Math.max(...[...document.querySelectorAll('[data-testid=stMain], [data-testid=stMainBlockContainer]')]"
        ".map(e => e.scrollHeight), 900)")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(height + 40, 6000)})  # type: ignore[attr-defined]
    page.wait_for_timeout(500)  # type: ignore[attr-defined]
    page.screenshot(path=str(full))  # type: ignore[attr-defined]
    page.set_viewport_size(VIEWPORT)  # type: ignore[attr-defined]
    if os.environ.get(SHOTS):
        out = Path(os.environ[SHOTS])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / path.name)
        shutil.copy(full, out / full.name)
    return path


def choose(page: object, combobox: object, option: str) -> None:
    """Pick ``option`` in a Streamlit selectbox: type it, then click it in the list that opens."""
    combobox.click()  # type: ignore[attr-defined]
    combobox.fill(option)  # type: ignore[attr-defined]
    page.get_by_role("option", name=option, exact=True).click()  # type: ignore[attr-defined]
    sync_api.expect(combobox).to_have_value(option)


def metric_values(page: object) -> dict[str, int]:
    metric = page.get_by_test_id("stMetric")  # type: ignore[attr-defined]
    shown = {}
    for i in range(metric.count()):
        label = metric.nth(i).get_by_test_id("stMetricLabel").inner_text().strip()
        value = metric.nth(i).get_by_test_id("stMetricValue").inner_text().replace(",", "")
        if value.isdigit():
            shown[label.split(" (")[0]] = int(value)
    return shown


def test_every_page_in_a_browser(dashboard: str, dash_settings: Settings, uid: str, tmp_path: Path) -> None:
    settings = dash_settings
    source = f"src-{uid}"
    seed_traffic(settings, source, datetime.now(UTC))
    seed_run(settings)
    in_redis = {k: sum(b.counts[k] for b in trend_counters(settings).read(MINUTE, 60)) for k in LABELS}

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        sync_api.expect.set_options(timeout=60_000)  # a loaded 2-core machine: the first run takes a while
        try:
            page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
            page.set_default_timeout(60_000)

            # --- Live trends, minute view (the default page) ---
            page.goto(dashboard)
            sync_api.expect(page.get_by_test_id("stMetric")).to_have_count(8)  # 4 of the trends, 4 of drift
            page.get_by_text("Buckets in UTC").wait_for()
            shown = metric_values(page)
            assert {k: shown[k] for k in LABELS} == in_redis
            assert shown["reviews, last 60 minutes"] == sum(in_redis.values())
            banner = page.get_by_test_id("stAlert").filter(has_text="Negative share")
            sync_api.expect(banner).to_contain_text("over the last 15 minutes (since ")  # the banner's window
            sync_api.expect(page.get_by_text("Last 60 minutes (since ")).to_be_visible()  # the metrics' window
            charts = page.get_by_test_id("stVegaLiteChart")
            sync_api.expect(charts).to_have_count(3)  # counts, shares and the drift score
            for i in range(3):
                sync_api.expect(charts.nth(i).locator("canvas, svg").first).to_be_visible()
            sync_api.expect(page.get_by_role("heading", name="Drift from the model's reference (all sources)")
                            ).to_be_attached()
            shoot(page, tmp_path, "trends-minute")

            store(settings, f"{source}-late", ["negative"] * 2)  # the page refreshes itself (every 10 s)
            total = str(sum(in_redis.values()) + 2)
            sync_api.expect(page.get_by_test_id("stMetricValue").nth(0)).to_have_text(total, timeout=30_000)

            # --- Live trends, hour view: the chart spans the data, not 48 empty hours ---
            page.get_by_test_id("stSidebar").get_by_text("hour", exact=True).click()
            sync_api.expect(page.get_by_test_id("stMetricLabel").nth(0)).to_contain_text("last 48 hours")
            sync_api.expect(page.get_by_text("over the last 3 hours (since ")).to_be_visible()
            sync_api.expect(charts).to_have_count(3)  # counts, shares and drift
            shoot(page, tmp_path, "trends-hour")

            # --- Reviews: the id in view at 1400 px, a correction shows at once ---
            page.goto(f"{dashboard}/reviews")
            page.get_by_role("heading", name="Reviews").wait_for()
            grid = page.get_by_test_id("stDataFrame").first
            sync_api.expect(grid).to_be_visible()
            choose(page, page.get_by_role("combobox", name="source"), f"{source}-late")  # other tests share the DB
            # The grid draws on a canvas and mirrors the columns in view into an accessible table.
            sync_api.expect(grid.locator("th[role=columnheader]").first).to_have_text("review id")
            first_id = grid.get_by_test_id("glide-cell-0-0")
            sync_api.expect(first_id).to_have_text(f"{source}-late-0")  # the newest processed (ties: by id)
            headers = grid.locator("th[role=columnheader]").all_text_contents()
            assert headers[:4] == ["review id", "processed (UTC)", "label", "corrected to"], headers
            form = page.get_by_test_id("stForm")
            sync_api.expect(form.get_by_role("combobox", name="review (id · current label · text)")).to_have_value(
                f"{source}-late-0 · negative · review 0")  # id, current label and text
            choose(page, form.get_by_role("combobox", name="correct label"), "positive")
            form.get_by_label("your name").fill("browser-test")
            form.get_by_role("button", name="Save correction").click()
            sync_api.expect(page.get_by_test_id("stAlert").filter(has_text="positive, by browser-test")).to_be_visible()
            sync_api.expect(grid.get_by_test_id("glide-cell-3-0")).to_have_text("positive")  # corrected to
            sync_api.expect(form.get_by_role("combobox", name="review (id · current label · text)")).to_have_value(
                f"{source}-late-0 · negative, corrected to positive · review 0")
            shoot(page, tmp_path, "reviews")

            # --- Classify: no `text` column, the picker takes the review text, not the ids ---
            texts = ["love this phone", "awful service, never again", "it arrived", 'comma, "quotes"\nand a newline']
            upload = io.StringIO()
            csv.writer(upload).writerows([["review_id", "stars", "review"],
                                          *[[f"r-{i}", i, t] for i, t in enumerate(texts)]])
            page.goto(f"{dashboard}/classify")
            page.locator("input[type=file]").set_input_files(
                files=[{"name": "reviews.csv", "mimeType": "text/csv", "buffer": upload.getvalue().encode()}])
            sync_api.expect(page.get_by_role("combobox", name="text column")).to_have_value("review")  # not the ids
            page.get_by_role("button", name="Classify 4 rows").click()
            page.get_by_text("rows/minute").first.wait_for()
            with page.expect_download() as download:
                page.get_by_role("button", name="Download the labelled CSV").click()
            rows = list(csv.DictReader(open(download.value.path(), encoding="utf-8", newline="")))  # noqa: SIM115
            assert [r["review"] for r in rows] == texts
            assert all(r["sentiment_label"] in LABELS for r in rows)
            shoot(page, tmp_path, "classify")

            # --- Experiments: the run in the models home, its confusion matrix and reliability diagram ---
            page.goto(f"{dashboard}/experiments")
            page.get_by_role("heading", name="Experiments and models").wait_for()
            sync_api.expect(page.get_by_text("confusion matrix (test split)")).to_be_visible()
            sync_api.expect(page.get_by_text("reliability diagram", exact=False).first).to_be_visible()
            assert page.get_by_text("No runs recorded").count() == 0
            images = page.get_by_test_id("stImage")
            sync_api.expect(images).to_have_count(3)  # the metrics plot, the matrix, the reliability diagram
            shoot(page, tmp_path, "experiments")
            for name in ("reviews", "experiments", "classify"):
                page.goto(f"{dashboard}/{name}")
                page.wait_for_timeout(1000)
                assert page.get_by_test_id("stException").count() == 0, name
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))  # what the page showed when a check failed
            raise
        finally:
            browser.close()
