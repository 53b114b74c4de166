"""The web page in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``),
driven by Selenium against a real stack: ``redis-server``, a Celery worker and uvicorn.

Nothing here downloads a browser: the driver is ``/usr/bin/chromedriver`` and the browser
``/usr/bin/chromium`` (``.ci/run`` installs both when missing). Without them the tests fail,
they are never skipped. Screenshots go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from stack.redis_server import RedisServer
from tests.faults.conftest import Cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("DIP_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("DIP_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
MAX_UPLOAD_BYTES = 200_000
API_KEY = "browser-test-key-0123456789"

pytestmark = pytest.mark.e2e


def png(size: int = 64, *, seed: int = 0, noise: bool = False) -> bytes:
    """A smooth RGB PNG (quick to fit), or pure noise (large once compressed)."""
    if noise:
        rgb = np.random.default_rng(seed).random((size, size, 3))
    else:
        y, x = np.mgrid[0:size, 0:size] / (size - 1)
        rgb = np.stack([0.5 + 0.4 * np.sin(3 * x + seed), 0.5 + 0.4 * np.cos(2 * y - seed), 0.3 + 0.4 * x * y], -1)
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files to pick in the page: a 64x64 image, a too-large one, a mask of the wrong size."""
    root = tmp_path_factory.mktemp("images")
    files = {"small": png(64), "huge": png(400, noise=True), "mask32": png(32)}
    paths = {}
    for name, data in files.items():
        paths[name] = root / f"{name}.png"
        paths[name].write_bytes(data)
    assert len(files["huge"]) > MAX_UPLOAD_BYTES
    return paths


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One Redis, one worker, and the API without keys (``stack.http`` talks to it)."""
    root = tmp_path_factory.mktemp("browser-stack")
    server = RedisServer(root / "redis")
    server.start()
    cluster = Cluster(root, server)
    try:
        cluster.start_worker("browser")
        cluster.start_api(DIP_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES))
        yield cluster
    finally:
        cluster.close()
        server.stop()


@pytest.fixture(scope="session")
def keyed_api(stack: Cluster) -> Iterator[Cluster]:
    """A second API on the same Redis, results and worker, with ``API_KEY`` configured."""
    cluster = Cluster(stack.root, stack.redis_server)
    try:
        cluster.start_api(DIP_API_KEYS=API_KEY, DIP_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES))
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def driver() -> Iterator[Any]:
    """Headless Chromium through Debian's chromedriver; fails (never skips) without them."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not (path.is_file() and os.access(path, os.X_OK))]
    if missing:
        pytest.fail(f"the browser tests need Debian's chromium and chromium-driver, missing: {', '.join(missing)} "
                    "(apt-get install -y chromium chromium-driver; .ci/run does it)", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.fail(f"the browser tests need selenium (the `test` extra): {exc}", pytrace=False)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    except Exception as exc:  # noqa: BLE001 - any failure to start is the reason to report
        pytest.fail(f"could not start headless Chromium ({CHROMIUM}) through {CHROMEDRIVER}: {exc}", pytrace=False)
    browser.set_script_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture
def shot(driver: Any, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Path]]:
    """``shot("name")`` saves a screenshot; the test's last state is saved too, pass or fail,
    with the browser's console printed on failure."""
    def save(name: str) -> Path:
        path = artifacts / f"{request.node.name}-{name}.png"
        driver.save_screenshot(str(path))
        return path

    yield save
    save("end")
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for entry in driver.get_log("browser"):
            print("browser console:", entry)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
