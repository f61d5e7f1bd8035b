"""End to end in a real browser: `sentiment dashboard` as a subprocess against the running stack, driven
by Debian's chromium through Playwright (no Playwright browser download: `apt-get install chromium`)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentiment_model.labels import LABELS
from storage.trends import MINUTE
from stream.services import trend_counters
from stream.settings import Settings
from tests.support import REPO, free_port, settings_env, store, wait_until

CHROMIUM = Path(os.environ.get("SENTIMENT_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / ".stack" / "artifacts"

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
def dashboard(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """`sentiment dashboard` on a free port with this test's settings; yields its URL."""
    port = free_port()
    log = (tmp_path / "dashboard.log").open("wb")
    env = {k: v for k, v in settings_env(settings).items() if not k.startswith("STREAMLIT_")}
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


def save_screenshot(page: object, tmp_path: Path, name: str) -> Path:
    """Into the test's own dir, and a copy into .stack/artifacts/ (which CI keeps) when writable."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    try:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, ARTIFACTS / name)
    except OSError:
        pass
    return path


def test_trends_and_csv_classify_in_a_browser(dashboard: str, settings: Settings, uid: str, tmp_path: Path) -> None:
    store(settings, f"src-{uid}", ["negative"] * 4 + ["neutral"] * 2 + ["positive"] * 3)
    in_redis = {k: sum(b.counts[k] for b in trend_counters(settings).read(MINUTE, 60)) for k in LABELS}

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page.set_default_timeout(60_000)

            page.goto(dashboard)  # the default page: Live trends
            metric = page.get_by_test_id("stMetric")
            sync_api.expect(metric).to_have_count(4)
            shown = {}
            for i in range(4):
                label = metric.nth(i).get_by_test_id("stMetricLabel").inner_text().strip()
                shown[label.split(" (")[0]] = int(metric.nth(i).get_by_test_id("stMetricValue").inner_text()
                                                  .replace(",", ""))
            assert {k: shown[k] for k in LABELS} == in_redis == {"negative": 4, "neutral": 2, "positive": 3}
            assert shown["reviews, last 60 minutes"] == 9
            page.get_by_text("Buckets in UTC").wait_for()
            save_screenshot(page, tmp_path, "dashboard.png")

            store(settings, f"src-{uid}-late", ["negative"] * 2)  # the page refreshes itself (every 10 s)
            sync_api.expect(metric.nth(0).get_by_test_id("stMetricValue")).to_have_text("11", timeout=30_000)

            texts = ["love this phone", "awful service, never again", "it arrived", 'comma, "quotes"\nand a newline']
            upload = io.StringIO()
            csv.writer(upload).writerows([["text", "stars"], *[[t, i] for i, t in enumerate(texts)]])
            page.goto(f"{dashboard}/classify")
            page.locator("input[type=file]").set_input_files(
                files=[{"name": "reviews.csv", "mimeType": "text/csv", "buffer": upload.getvalue().encode()}])
            page.get_by_role("button", name="Classify 4 rows").click()
            page.get_by_text("rows/minute").first.wait_for()
            with page.expect_download() as download:
                page.get_by_role("button", name="Download the labelled CSV").click()
            rows = list(csv.DictReader(open(download.value.path(), encoding="utf-8", newline="")))  # noqa: SIM115
            assert [r["text"] for r in rows] == texts
            assert all(r["label"] in LABELS for r in rows)
            save_screenshot(page, tmp_path, "dashboard-classify.png")

            for name, heading in (("reviews", "Reviews"), ("experiments", "Experiments and models")):
                page.goto(f"{dashboard}/{name}")
                page.get_by_role("heading", name=heading).wait_for()
                page.wait_for_timeout(1500)  # let the page finish its run
                assert page.get_by_test_id("stException").count() == 0
                save_screenshot(page, tmp_path, f"dashboard-{name}.png")
        finally:
            browser.close()
