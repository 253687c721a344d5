"""The QA report opened in a real headless browser (Debian's Chromium driven by chromedriver through Selenium):
the page loads with no console error and no broken image, the random-weights banner shows, images are named by
their source with the id on hover, ignored pixels are drawn and counted, and a screenshot is written.

Chromium and chromidriver come from the OS packages (``apt-get install chromium chromium-driver``;
scripts/install.sh installs them when missing). Without them the test is skipped, except under CI (``CI`` set),
where it fails."""
from __future__ import annotations

import os
import shutil

import pytest

from jobs import report
from pipeline.labels.reader import open_run
from tests.consumer_fixtures import CLASSES, review_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _browser():
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium/chromedriver missing: scripts/install.sh installs them (apt-get)")
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--allow-file-access-from-files", "--window-size=1400,2000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def test_report_in_a_headless_browser(tmp_path):
    driver = _browser()
    run_dir, sources = review_run(tmp_path)
    out = tmp_path / "qa"
    numbers = report.build(open_run(run_dir), str(out), n=4, seed=0, per_class=2)
    assert numbers["random_weights"] and 0.05 < numbers["ignored_share"] < 0.6
    # the all-background image has a confidence and is ranked by it (not first at 0.000)
    rows = {r["image_id"]: r for r in open_run(run_dir).rows(status="ok")}
    empty = next(i for i, n in sources.items() if n == "empty-wall.png")
    assert rows[empty]["segments"] == [] and rows[empty]["confidence"] > 0.5
    ranked = sorted(rows, key=lambda i: rows[i]["confidence"])
    assert numbers["lowest"] == ranked[:4]
    try:
        driver.get((out / "index.html").as_uri())
        state = driver.execute_script("""
            const imgs = Array.from(document.images);
            return {ready: document.readyState, n: imgs.length,
                    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
                    banner: (document.getElementById('random-weights') || {}).innerText || '',
                    bannerTop: document.getElementById('random-weights').getBoundingClientRect().top,
                    captions: Array.from(document.querySelectorAll('figcaption b')).map(b => b.textContent),
                    tips: Array.from(document.querySelectorAll('figure img')).map(i => i.title),
                    ids: Array.from(document.querySelectorAll('code.id')).map(c => c.textContent),
                    ignored: document.querySelectorAll('.legend .sw.ign').length,
                    classSections: Array.from(document.querySelectorAll('details.class')).map(d => d.dataset.class),
                    h2: Array.from(document.querySelectorAll('h2')).map(h => h.innerText)};
        """)
        logs = driver.get_log("browser")
        shot = out / "screenshot.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert state["ready"] == "complete" and state["n"] >= 6 and state["broken"] == [], state["broken"]
    assert [entry for entry in logs if entry["level"] in ("SEVERE", "WARNING")] == [], logs
    assert "RANDOM WEIGHTS" in state["banner"] and state["bannerTop"] < 50
    assert state["captions"] and set(state["captions"]) <= set(sources.values())
    assert all(any(i in tip for i in sources) for tip in state["tips"])  # the id on hover
    assert set(state["ids"]) <= set(sources)  # and in a copyable line
    assert state["ignored"] >= 4  # every image with an ignore region says how much
    assert state["classSections"] and set(state["classSections"]) <= set(CLASSES[1:])
    assert any(h.startswith("Errors") for h in state["h2"])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    # every section with nothing to show is left out: a run without failures has no Errors section
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "ignored pixels (--ignore-below 0.4)" in text and "--instances" in text
