"""The web page at ``/`` in headless Chromium against the real stack (see conftest.py)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import API_KEY
from tests.faults.conftest import Cluster

pytestmark = pytest.mark.e2e

JOB_TIMEOUT_S = 120

# Records every value the progress text and the curve's point count take, as they change.
WATCH = """
window.__progress = []; window.__points = [];
new MutationObserver(() => window.__progress.push(document.getElementById('job-progress').dataset.iteration))
  .observe(document.getElementById('job-progress'), {attributes: true, attributeFilter: ['data-iteration']});
new MutationObserver(() => window.__points.push(Number(document.getElementById('curves').dataset.points)))
  .observe(document.getElementById('curves'), {attributes: true, attributeFilter: ['data-points']});
"""


def open_page(driver: Any, api: Cluster, fragment: str = "") -> None:
    driver.get(f"{api.http.base_url}/")
    driver.execute_script("sessionStorage.clear()")
    driver.get("about:blank")  # a new document: another fragment alone would keep the old page
    driver.get(f"{api.http.base_url}/{fragment}")
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")


def wait(driver: Any, condition: Callable[[Any], Any], what: str, timeout_s: float = JOB_TIMEOUT_S) -> Any:
    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(condition, message=f"not within {timeout_s} s: {what}")


def status_of(driver: Any) -> str | None:
    return driver.find_element(By.ID, "job-status").get_attribute("data-status")


def wait_status(driver: Any, status: str, timeout_s: float = JOB_TIMEOUT_S) -> None:
    def check(d: Any) -> bool:
        error = d.find_element(By.ID, "error")
        assert not error.is_displayed(), f"the page shows an error: {error.text}"
        return status_of(d) == status
    wait(driver, check, f"job {status}", timeout_s)


def job_id(driver: Any) -> str:
    return wait(driver, lambda d: (m := re.search(r"job=([\w-]+)", d.current_url)) and m.group(1), "a job opened", 30)


def image_rendered(driver: Any, element_id: str) -> bool:
    return driver.execute_script(
        "const i = document.getElementById(arguments[0]); return i.complete && i.naturalWidth > 0 "
        "&& i.offsetParent !== null", element_id)


def fill(driver: Any, element_id: str, value: str) -> None:
    element = driver.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(value)


def error_text(driver: Any) -> str:
    wait(driver, lambda d: d.find_element(By.ID, "error").is_displayed(), "an error shown", 30)
    return driver.find_element(By.ID, "error-text").text


# -- tests ---------------------------------------------------------------------------


def test_page_is_served_same_origin_with_nothing_from_outside(stack: Cluster) -> None:
    page = stack.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert stack.http.get(asset).status_code == 200
    static = Path(__file__).resolve().parents[2] / "api" / "static"
    for path in static.iterdir():
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a fetch
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), f"{path.name} links outside"
    # The page's own writes are same-origin: the request guard lets them through.
    origin = str(stack.http.base_url).rstrip("/")
    response = stack.http.post("/v1/jobs/nope/cancel", headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 404, response.text
    assert "/" not in stack.http.get("/openapi.json").json()["paths"]


def test_submit_watch_progress_curves_and_result(driver: Any, stack: Cluster, images: dict[str, Path],
                                                 shot: Callable[[str], Path]) -> None:
    open_page(driver, stack)
    driver.execute_script(WATCH)
    driver.find_element(By.ID, "image-input").send_keys(str(images["small"]))
    wait(driver, lambda d: image_rendered(d, "image-preview"), "the chosen image previewed", 10)
    Select(driver.find_element(By.ID, "task")).select_by_value("denoise")
    fill(driver, "add_noise_sigma", "25")
    fill(driver, "iterations", "200")
    shot("form")
    driver.find_element(By.ID, "submit-button").click()
    job = job_id(driver)

    wait(driver, lambda d: len(set(d.execute_script("return window.__progress"))) >= 3, "progress advancing")
    wait(driver, lambda d: max(d.execute_script("return window.__points") or [0]) >= 3, "the curve gaining points")
    shot("running")
    wait_status(driver, "succeeded")
    wait(driver, lambda d: image_rendered(d, "job-result"), "the result image rendered", 30)
    wait(driver, lambda d: image_rendered(d, "job-snapshot"), "a snapshot rendered", 30)

    progress = [int(v) for v in driver.execute_script("return window.__progress") if v]
    assert progress == sorted(progress) and progress[-1] > progress[0], progress
    points = driver.execute_script("return window.__points")
    assert len(set(points)) >= 2 and max(points) >= 10, points
    assert driver.find_element(By.ID, "job-progress").get_attribute("value") == "1"
    for link in ("download-result", "download-best", "download-curves", "download-history"):
        element = driver.find_element(By.ID, link)
        assert element.is_displayed(), link
        assert stack.http.get(element.get_attribute("href")).status_code == 200, link
    slider = driver.find_element(By.ID, "snapshot-slider")
    assert slider.is_displayed() and int(slider.get_attribute("max")) >= 1
    slider.send_keys(Keys.HOME)
    wait(driver, lambda d: "1 of" in d.find_element(By.ID, "snapshot-caption").text, "the first snapshot shown", 10)
    shot("done")
    items = driver.find_elements(By.CSS_SELECTOR, f'#jobs-list button[data-job-id="{job}"]')
    assert items and items[0].get_attribute("data-status") in ("succeeded", "running", "queued")


def test_paint_a_mask_and_inpaint(driver: Any, stack: Cluster, images: dict[str, Path],
                                  shot: Callable[[str], Path]) -> None:
    open_page(driver, stack)
    driver.find_element(By.ID, "image-input").send_keys(str(images["small"]))
    wait(driver, lambda d: image_rendered(d, "image-preview"), "the chosen image previewed", 10)
    Select(driver.find_element(By.ID, "task")).select_by_value("inpaint")
    canvas = driver.find_element(By.ID, "mask-canvas")
    assert canvas.is_displayed()
    driver.execute_script("const b = document.getElementById('brush-size'); b.value = 12;"
                          "b.dispatchEvent(new Event('input'))")
    size = canvas.size
    painted = ("const c = document.getElementById('mask-canvas');"
               "return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.filter((v, i) => i % 4 == 3 && v)"
               ".length")

    def paint() -> None:
        (ActionChains(driver).move_to_element_with_offset(canvas, -size["width"] // 4, -size["height"] // 4)
         .click_and_hold().move_by_offset(size["width"] // 2, 0).move_by_offset(0, size["height"] // 3)
         .release().perform())

    paint()
    assert driver.execute_script(painted) > 0
    driver.find_element(By.ID, "mask-clear").click()
    assert driver.execute_script(painted) == 0
    paint()
    before = driver.execute_script(painted)
    driver.find_element(By.ID, "eraser").click()
    (ActionChains(driver).move_to_element_with_offset(canvas, -size["width"] // 4, -size["height"] // 4)
     .click_and_hold().move_by_offset(size["width"] // 8, 0).release().perform())
    driver.find_element(By.ID, "eraser").click()
    assert 0 < driver.execute_script(painted) < before
    fill(driver, "iterations", "60")
    shot("painted")
    driver.find_element(By.ID, "submit-button").click()
    job = job_id(driver)
    wait_status(driver, "succeeded")
    wait(driver, lambda d: image_rendered(d, "job-result"), "the result image rendered", 30)
    shot("done")

    record = stack.http.get(f"/v1/jobs/{job}").json()
    assert record["task"] == "inpaint"
    mask = np.asarray(Image.open(io.BytesIO(stack.http.get(record["inputs"]["mask"]).content)).convert("L"))
    assert mask.shape == (64, 64)
    holes = (mask < 128).mean()
    assert 0.02 < holes < 0.5, f"painted fraction {holes}"


def test_cancel_a_running_job(driver: Any, stack: Cluster, images: dict[str, Path],
                              shot: Callable[[str], Path]) -> None:
    open_page(driver, stack)
    driver.find_element(By.ID, "image-input").send_keys(str(images["small"]))
    fill(driver, "iterations", "20000")
    Select(driver.find_element(By.ID, "early_stop")).select_by_value("off")
    driver.find_element(By.ID, "submit-button").click()
    job = job_id(driver)
    wait(driver, lambda d: int(d.find_element(By.ID, "job-progress").get_attribute("data-iteration") or 0) > 0,
         "the job running")
    driver.find_element(By.ID, "cancel-button").click()
    wait_status(driver, "canceled", timeout_s=60)
    assert not driver.find_element(By.ID, "cancel-button").is_enabled()
    assert stack.http.get(f"/v1/jobs/{job}").json()["status"] == "canceled"
    shot("canceled")


def test_errors_are_shown_in_plain_words(driver: Any, stack: Cluster, images: dict[str, Path],
                                         shot: Callable[[str], Path]) -> None:
    open_page(driver, stack)
    driver.find_element(By.ID, "image-input").send_keys(str(images["huge"]))
    driver.find_element(By.ID, "submit-button").click()
    assert "too large" in error_text(driver)
    shot("too-large")
    driver.find_element(By.ID, "error-close").click()

    driver.find_element(By.ID, "image-input").send_keys(str(images["small"]))
    wait(driver, lambda d: image_rendered(d, "image-preview"), "the chosen image previewed", 10)
    Select(driver.find_element(By.ID, "task")).select_by_value("inpaint")
    driver.find_element(By.ID, "mask-mode-upload").click()
    driver.find_element(By.ID, "mask-input").send_keys(str(images["mask32"]))
    driver.find_element(By.ID, "submit-button").click()
    text = error_text(driver)
    assert "mask must be exactly the size of the image" in text and "32x32" in text, text
    shot("mask-size")


def test_keyboard_only_submit(driver: Any, stack: Cluster, images: dict[str, Path],
                              shot: Callable[[str], Path]) -> None:
    open_page(driver, stack)
    # Picking the file is the browser's own dialog; everything after it is keys only.
    driver.find_element(By.ID, "image-input").send_keys(str(images["small"]))
    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")

    def tab_to(element_id: str, limit: int = 40) -> None:
        for _ in range(limit):
            ActionChains(driver).send_keys(Keys.TAB).perform()
            if driver.execute_script("return document.activeElement.id") == element_id:
                return
        pytest.fail(f"#{element_id} is not reachable with Tab")

    tab_to("add_noise_sigma")
    ActionChains(driver).send_keys("25").perform()
    tab_to("iterations")
    ActionChains(driver).send_keys("40").perform()
    tab_to("submit-button")
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    job = job_id(driver)
    wait_status(driver, "succeeded")
    assert stack.http.get(f"/v1/jobs/{job}").json()["params"]["iterations"] == 40
    # The list opens a job from the keyboard too.
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'#jobs-list button[data-job-id="{job}"]'),
         "the job listed", 30)
    driver.execute_script("location.hash = ''")
    first = driver.find_element(By.CSS_SELECTOR, "#jobs-list button").get_attribute("data-job-id")
    tab_to("jobs-refresh")
    ActionChains(driver).send_keys(Keys.TAB, Keys.ENTER).perform()
    wait(driver, lambda d: f"job={first}" in d.current_url, "a job opened from the list by Enter", 10)
    shot("keyboard")


def test_fits_360_px_wide(driver: Any, stack: Cluster, images: dict[str, Path], shot: Callable[[str], Path]) -> None:
    job = stack.submit(iterations=30)
    stack.wait_finished(job)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 360, "height": 740, "deviceScaleFactor": 2, "mobile": True})
    try:
        open_page(driver, stack, f"#job={job}")
        wait_status(driver, "succeeded")
        wait(driver, lambda d: image_rendered(d, "job-result"), "the result image rendered", 30)
        outputs = stack.http.get(f"/v1/jobs/{job}").json()["outputs"]
        count = outputs.get("snapshot_count", len(outputs.get("snapshots") or []))
        assert count >= 2
        wait(driver, lambda d: int(d.find_element(By.ID, "snapshot-slider").get_attribute("max")) == count - 1,
             f"the slider over all {count} snapshots", 10)
        driver.find_element(By.ID, "image-input").send_keys(str(images["small"]))
        Select(driver.find_element(By.ID, "task")).select_by_value("inpaint")
        wait(driver, lambda d: image_rendered(d, "image-preview"), "the chosen image previewed", 10)
        assert driver.execute_script("return window.innerWidth") == 360
        overflow = driver.execute_script("""
            const width = document.documentElement.clientWidth;
            const wide = [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > width + 0.5)
              .map(e => e.tagName + '#' + e.id + '.' + e.className);
            return {scroll: document.documentElement.scrollWidth, width, wide};""")
        assert overflow["scroll"] <= overflow["width"] and not overflow["wide"], overflow
        shot("360px")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_asks_for_a_key_and_keeps_it_for_the_tab(driver: Any, keyed_api: Cluster, images: dict[str, Path],
                                                 shot: Callable[[str], Path]) -> None:
    open_page(driver, keyed_api)
    wait(driver, lambda d: d.find_element(By.ID, "key-section").is_displayed(), "the key asked for", 10)
    shot("asked")
    driver.find_element(By.ID, "key-input").send_keys("not-the-right-key-at-all", Keys.ENTER)
    assert "key is missing or not valid" in error_text(driver)
    driver.find_element(By.ID, "key-input").send_keys(API_KEY, Keys.ENTER)
    wait(driver, lambda d: not d.find_element(By.ID, "key-section").is_displayed(), "the key accepted", 10)
    assert driver.execute_script("return sessionStorage.getItem('dip.apiKey')") == API_KEY
    assert driver.execute_script("return localStorage.length") == 0
    driver.execute_script(WATCH)
    driver.find_element(By.ID, "image-input").send_keys(str(images["small"]))
    fill(driver, "iterations", "60")
    driver.find_element(By.ID, "submit-button").click()
    job = job_id(driver)
    wait_status(driver, "succeeded")
    wait(driver, lambda d: image_rendered(d, "job-result"), "the result image rendered", 30)
    assert driver.find_element(By.ID, "job-result").get_attribute("src").startswith("blob:")
    assert max(driver.execute_script("return window.__points")) >= 2
    unauthenticated = httpx.get(f"{keyed_api.http.base_url}/v1/jobs/{job}")
    assert unauthenticated.status_code == 401
    shot("done")


def test_event_stream_resumes_after_the_api_restarts(driver: Any, stack: Cluster, images: dict[str, Path],
                                                     shot: Callable[[str], Path]) -> None:
    """The page reads the stream with fetch(): when it drops, it reconnects with Last-Event-ID
    and goes on from there, instead of replaying the job from its start."""
    api = Cluster(stack.root, stack.redis_server)
    try:
        first = api.start_api()
        open_page(driver, api)
        driver.execute_script(WATCH)
        driver.find_element(By.ID, "image-input").send_keys(str(images["small"]))
        fill(driver, "iterations", "20000")
        Select(driver.find_element(By.ID, "early_stop")).select_by_value("off")
        driver.find_element(By.ID, "submit-button").click()
        job = job_id(driver)
        wait(driver, lambda d: int(d.find_element(By.ID, "job-progress").get_attribute("data-iteration") or 0) >= 50,
             "the job running past iteration 50")
        first.stop()
        api.procs.remove(first)
        seen = len(driver.execute_script("return window.__progress"))
        wait(driver, lambda d: d.find_element(By.ID, "job-connection").is_displayed(), "the lost connection shown", 30)
        api.start_api()
        wait(driver, lambda d: len(d.execute_script("return window.__progress")) > seen + 3,
             "progress again after the API restarted")
        progress = [int(v) for v in driver.execute_script("return window.__progress") if v]
        assert progress == sorted(progress), f"the stream was replayed from the start: {progress}"
        assert not driver.find_element(By.ID, "job-connection").is_displayed()
        shot("resumed")
        assert api.http.post(f"/v1/jobs/{job}/cancel").status_code in (200, 202)
        wait_status(driver, "canceled", timeout_s=60)
    finally:
        api.close()
