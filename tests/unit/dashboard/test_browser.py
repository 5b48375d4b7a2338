"""The dashboard in a real headless Chromium (Debian's, driven by its chromium-driver through Selenium),
against a real dashboard process, a real worker and a real training job on a tiny model:

open the board, submit a training job from the form, watch it run to done through the live updates
(no reload), cancel a second job with its button, open the run page and check that the loss curve is
drawn from data points, use the memory calculator and check that the breakdown sums to the total.
Screenshots of every page go to the test's temp dir (and to ``$EXPERTKIT_SCREENSHOTS`` when set), at
1280×800, in the light theme and, for the run page, the dark one.

A missing browser is a set-up failure (``make test`` installs it), never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from expertkit.home import models_dir
from unit.train.helpers import write_tiny_expert

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout:.0f} s")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    assert Path(CHROMIUM).exists() and Path(DRIVER).exists(), "chromium + chromium-driver missing: run `make test`"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,800",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers online
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_window_size(1280, 800)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def dashboard(tmp_path: Path, tiny_llama_dir: Path, expertkit_home: Path) -> Iterator[dict[str, Any]]:
    """A dashboard process and a worker process on one SQLite queue, a tiny expert, a ready tiny model."""
    shutil.copytree(tiny_llama_dir, models_dir() / "tiny-llama")
    expert = write_tiny_expert(tmp_path / "expert", [tiny_llama_dir], config={"logging_steps": 1, "eval_steps": 3})
    queue = f"sqlite:///{tmp_path / 'queue.db'}"
    port = free_port()
    cli = [sys.executable, "-m", "expertkit"]
    logs = (tmp_path / "dashboard.log").open("w"), (tmp_path / "worker.log").open("w")
    server = subprocess.Popen([*cli, "dashboard", "--port", str(port), "--queue", queue, "--expert", str(expert)],
                              stdout=logs[0], stderr=subprocess.STDOUT)  # fmt: skip
    worker = subprocess.Popen([*cli, "worker", "--queue", queue, "--name", "box-a", "--poll", "0.3"],
                              stdout=logs[1], stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        yield {"url": f"http://127.0.0.1:{port}", "expert": expert, "queue": queue}
    finally:
        for process in (worker, server):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


def shoot(driver: Any, tmp_path: Path, name: str) -> None:
    for directory in filter(None, (tmp_path / "screenshots", os.environ.get("EXPERTKIT_SCREENSHOTS"))):
        Path(directory).mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(Path(directory) / f"{name}.png"))


def row_state(driver: Any, job: int) -> str | None:
    # one script, so a board replaced by the live stream between finding the row and reading it cannot race
    state = driver.execute_script(
        f"const row = document.getElementById('job-{job}'); return row ? row.dataset.state : null"
    )
    return str(state) if state else None


def submit(driver: Any, expert: Path, options: str, level: str) -> int:
    driver.find_element(By.ID, "expert").clear()
    driver.find_element(By.ID, "expert").send_keys(str(expert))
    Select(driver.find_element(By.ID, "kind")).select_by_visible_text("train")
    Select(driver.find_element(By.ID, "level")).select_by_visible_text(level)
    driver.find_element(By.ID, "options").clear()
    driver.find_element(By.ID, "options").send_keys(options)
    before = driver.find_element(By.ID, "submitted").text
    driver.find_element(By.ID, "submit-button").click()
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "submitted").text not in ("", before))
    text = driver.find_element(By.ID, "submitted").text
    assert text.startswith("submitted job "), text
    return int(text.rsplit(" ", 1)[1])


def test_the_dashboard_in_a_real_browser(browser: Any, dashboard: dict[str, Any], tmp_path: Path) -> None:
    url, expert = dashboard["url"], dashboard["expert"]
    browser.get(f"{url}/jobs")
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.ID, "live").text == "live updates: on")
    first = submit(browser, expert, "--max-steps 6", "normal")
    second = submit(browser, expert, "--max-steps 6", "low")  # waits behind the first (one worker slot)
    # both by the live stream alone: the first claimed by the worker, the second queued behind it
    WebDriverWait(browser, 30).until(lambda d: (row_state(d, first), row_state(d, second)) == ("running", "queued"))
    shoot(browser, tmp_path, "jobs")
    browser.find_element(By.CSS_SELECTOR, f'button[data-action="cancel"][data-job="{second}"]').click()
    WebDriverWait(browser, 15).until(lambda d: row_state(d, second) == "cancelled")
    WebDriverWait(browser, 240).until(lambda d: row_state(d, first) in ("succeeded", "failed"))
    assert row_state(browser, first) == "succeeded", (tmp_path / "worker.log").read_text()[-3000:]
    shoot(browser, tmp_path, "jobs-done")

    browser.get(f"{url}/jobs/{first}")
    shoot(browser, tmp_path, "job")
    assert browser.find_elements(By.CSS_SELECTOR, "td.state-succeeded")
    browser.get(f"{url}/runs")
    shoot(browser, tmp_path, "runs")
    browser.find_element(By.CSS_SELECTOR, "table a[href^='/runs/']").click()
    WebDriverWait(browser, 15).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#chart-loss canvas"))
    )
    drawn = browser.execute_script(
        "const u = window.expertkitCharts['chart-loss']; return [u.data[0].length, u.data[1].filter(v => v !== null).length]"
    )
    assert drawn[0] >= 6 and drawn[1] >= 6, drawn  # six logged steps, each a point of the train-loss curve
    width = browser.execute_script("return document.querySelector('#chart-loss canvas').width")
    assert width > 300
    assert "published: step" in browser.find_element(By.TAG_NAME, "main").text
    shoot(browser, tmp_path, "run")
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    )
    browser.refresh()
    WebDriverWait(browser, 15).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#chart-loss canvas"))
    )
    background = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)", background  # the dark theme's background: the charts read its colours
    shoot(browser, tmp_path, "run-dark")
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "light"}]}
    )

    browser.get(f"{url}/memory")
    Select(browser.find_element(By.ID, "model")).select_by_visible_text("tiny-llama")
    Select(browser.find_element(By.ID, "preset")).select_by_value("H200 (141 GB)")
    browser.find_element(By.ID, "estimate").click()
    WebDriverWait(browser, 120).until(expected_conditions.presence_of_element_located((By.ID, "breakdown")))
    bar = browser.find_element(By.ID, "breakdown")
    parts = [float(s.get_attribute("data-mib")) for s in bar.find_elements(By.CLASS_NAME, "segment")]
    assert len(parts) >= 6 and sum(parts) == pytest.approx(float(bar.get_attribute("data-total")), abs=0.5)
    widths = [s.size["width"] for s in bar.find_elements(By.CLASS_NAME, "segment")]
    assert sum(widths) > 0  # drawn, not only present
    shoot(browser, tmp_path, "memory")
    for page in ("experts", "workers"):
        browser.get(f"{url}/{page}")
        shoot(browser, tmp_path, page)
    assert "box-a" in browser.find_element(By.TAG_NAME, "main").text
    assert len(list((tmp_path / "screenshots").glob("*.png"))) == 9
