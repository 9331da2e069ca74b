"""``bench serve``'s page in a real browser: Debian's headless Chromium, driven by Selenium
through the system chromedriver (no browser download), uploads images through the file
input and reads each predicted class off the page.

Skipped only where no Chromium is installed and neither ``CI`` nor
``BENCH_REQUIRE_BROWSER`` is set; ``.ci/run`` installs it and sets the latter, so in CI a
missing browser fails. ``BENCH_SERVE_SCREENSHOT=PATH`` saves the page after the upload;
``BENCH_SERVE_FROM=OUT`` and ``BENCH_SERVE_IMAGES=a.jpg,b.jpg`` serve and upload those
instead of the session's tiny zoo (docs/serve-screenshot.png is taken this way)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serve_helpers import images, running_server, shared_zoo

CHROMIUM = os.environ.get("BENCH_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.environ.get("BENCH_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1100,720")


def _required() -> bool:
    return any(os.environ.get(v, "").lower() not in ("", "0", "false")
               for v in ("CI", "BENCH_REQUIRE_BROWSER"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, DRIVER) if not Path(p).exists()]
    if missing:
        msg = (f"{', '.join(missing)} not found: apt-get install chromium chromium-driver "
               f"(.ci/run does)")
        if _required():
            pytest.fail(msg + "; CI/BENCH_REQUIRE_BROWSER is set, so this is a failure")
        pytest.skip(msg)
    os.environ.setdefault("SE_OFFLINE", "true")   # Selenium Manager: never download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})  # console errors
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_state(driver, state: str, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-state") == state)


def test_upload_through_the_page(browser, tmp_path_factory):
    from bench.predict import load_predictor
    from bench.serve import create_app

    if os.environ.get("BENCH_SERVE_FROM"):
        predictor = load_predictor(os.environ["BENCH_SERVE_FROM"])
        files = [Path(f) for f in os.environ["BENCH_SERVE_IMAGES"].split(",")]
    else:
        folder, out = shared_zoo(tmp_path_factory)
        predictor = load_predictor(out)
        files = images(folder)[:3]
    expected = list(predictor.predict(files))
    app = create_app(predictor, max_batch=4, max_wait_ms=2)
    with running_server(app) as (base, _, _):
        browser.get(base + "/")
        _wait_state(browser, "ready")
        assert browser.find_element("id", "model-name").text.startswith(predictor.name)
        classes = [e.text for e in browser.find_elements("css selector", "#model-classes span")]
        assert classes == list(predictor.classes_)
        assert "accuracy" in browser.find_element("id", "model-meta").text
        browser.find_element("id", "files").send_keys("\n".join(str(p) for p in files))
        _wait_state(browser, "done")
        cards = browser.find_elements("css selector", "#results .card")
        assert [c.find_element("css selector", ".fname").text for c in cards] == [
            p.name for p in files]
        shown = [c.find_element("css selector", ".predicted").get_attribute("data-class")
                 for c in cards]
        assert shown == expected
        bars = cards[0].find_elements("css selector", ".row")
        assert len(bars) == min(5, len(predictor.classes_)) and "%" in bars[0].text
        errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors
        shot = os.environ.get("BENCH_SERVE_SCREENSHOT")
        if shot:
            assert browser.save_screenshot(str(Path(shot).resolve())), shot
