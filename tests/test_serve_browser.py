"""The page at `/` in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
never a downloaded browser) driven by Selenium against `nanovla serve` started with its defaults.

Skips, saying what is missing, where Chromium, chromedriver or selenium are not installed; fails
instead when NANOVLA_REQUIRE_BROWSER=1 (.ci/run sets it, scripts/setup.sh installs them).
NANOVLA_SCREENSHOT=docs/serve.png also saves the page's screenshot there (the README's)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from serve_helpers import ROOT, request, serve_subprocess

CHROMIUM = os.environ.get("NANOVLA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("NANOVLA_CHROMEDRIVER", "/usr/bin/chromedriver")
SAMPLES = os.path.join(ROOT, "nanovla", "assets", "samples")


def _missing() -> list[str]:
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            missing.append(f"{path} (apt-get install {package})")
    for module in ("fastapi", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{module} (pip install -e '.[serve]')")
    return missing


@pytest.fixture(scope="module")
def browser():
    missing = _missing()
    if missing:
        message = "the browser test needs " + ", ".join(missing)
        if os.environ.get("NANOVLA_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,860", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = str(tmp_path_factory.mktemp("serve") / "serve.log")
    with serve_subprocess(log_path=log) as (base, _process):
        yield base


def _reset(driver, element_id: str) -> None:
    """Mark the element idle before an action, so _wait_state waits for that action's outcome."""
    driver.execute_script(f"document.getElementById('{element_id}').dataset.state = 'idle'")


def _wait_state(driver, element_id: str, timeout: float = 120.0) -> str:
    """Wait until the element's data-state is done or error; -> that state."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, element_id).get_attribute("data-state") in ("done", "error"))
    return driver.find_element(By.ID, element_id).get_attribute("data-state")


def test_upload_a_sample_see_its_description_and_ask_about_it(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with open(os.path.join(SAMPLES, "ground_truth.json")) as f:
        truth = {row["image"]: row["objects"] for row in json.load(f)}
    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#samples button.sample"))
    assert "default" in browser.find_element(By.ID, "model").text

    # upload through the file input, as a user choosing a file does
    browser.find_element(By.ID, "file").send_keys(os.path.join(SAMPLES, "scene_0.jpg"))
    assert _wait_state(browser, "description") == "done", browser.find_element(By.ID, "description").text
    description = browser.find_element(By.ID, "description").text
    assert any(o["kind"] in description for o in truth["scene_0.jpg"]), description
    assert "ms" in browser.find_element(By.ID, "description-latency").text
    assert browser.find_element(By.ID, "preview").get_attribute("naturalWidth") == "640"

    # a shipped sample, chosen with its button
    _reset(browser, "description")
    browser.find_element(By.XPATH, "//button[text()='scene_1.jpg']").click()
    assert _wait_state(browser, "description") == "done"
    assert any(o["kind"] in browser.find_element(By.ID, "description").text for o in truth["scene_1.jpg"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history li")) == 2

    # a question about the same image: streamed answer, its latency, and the history grows
    browser.find_element(By.ID, "question").send_keys("what colour is the cube?")
    browser.find_element(By.ID, "ask").click()
    assert _wait_state(browser, "answer") == "done"
    assert browser.find_element(By.ID, "answer").text.strip()
    assert "image context cached" in browser.find_element(By.ID, "answer-latency").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history li")) == 3

    browser.execute_script("window.scrollTo(0, 0)")
    screenshot = str(tmp_path / "serve.png")
    assert browser.save_screenshot(screenshot)
    if os.environ.get("NANOVLA_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["NANOVLA_SCREENSHOT"])

    # a file that is not an image: the page shows the server's error, and the server stays up
    bogus = tmp_path / "not_an_image.jpg"
    bogus.write_bytes(b"this is not a JPEG")
    _reset(browser, "description")
    browser.find_element(By.ID, "file").send_keys(str(bogus))
    assert _wait_state(browser, "description") == "error"
    assert "not a decodable image" in browser.find_element(By.ID, "description").text
    assert browser.find_element(By.ID, "ask").get_attribute("disabled")  # no questions about it
    assert request(server + "/health")[0] == 200
