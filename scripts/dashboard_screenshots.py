"""Screenshots of every dashboard page during a real run of the embedded model (docs/screenshots/).

Starts a dashboard and a worker on a private SQLite queue in ``$EXPERTKIT_HOME`` (which must hold the
pulled SmolLM2-135M-Instruct; installed experts there show on the experts page), submits a training
job for the SQL example expert from the board's form in headless Chromium, and captures the board and
the run page while it trains (live), then every page once it is done, at 1280×800 (the run page also
in the dark theme and as one full-page image).

    EXPERTKIT_HOME=... .venv/bin/python scripts/dashboard_screenshots.py [--steps 20] [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

REPO = Path(__file__).resolve().parents[1]
EXPERT = REPO / "examples" / "experts" / "expert-sql"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chrome() -> Any:
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    driver.set_window_size(1280, 800)
    return driver


def shot(driver: Any, out: Path, name: str, full: bool = False) -> None:
    if full:
        data = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "format": "png"})
        (out / f"{name}.png").write_bytes(base64.b64decode(data["data"]))
    else:
        driver.save_screenshot(str(out / f"{name}.png"))
    print(f"  {out / name}.png", flush=True)


def state(driver: Any, job: int) -> str | None:
    # one script, so a board replaced by the live stream between finding the row and reading it cannot race
    state = driver.execute_script(
        f"const row = document.getElementById('job-{job}'); return row ? row.dataset.state : null"
    )
    return str(state) if state else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dashboard-shots-"))
    queue, port = f"sqlite:///{work / 'queue.db'}", free_port()
    cli = [sys.executable, "-m", "expertkit"]
    server = subprocess.Popen([*cli, "dashboard", "--port", str(port), "--queue", queue], stdout=subprocess.DEVNULL)
    worker = subprocess.Popen([*cli, "worker", "--queue", queue, "--name", "cpu-box"], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    driver = chrome()
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        driver.get(f"{url}/jobs")
        driver.find_element(By.ID, "expert").send_keys(str(EXPERT))
        Select(driver.find_element(By.ID, "kind")).select_by_visible_text("train")
        eval_every = max(args.steps // 2, 1)
        driver.find_element(By.ID, "options").send_keys(f"--max-steps {args.steps} --eval-steps {eval_every}")
        driver.find_element(By.ID, "submit-button").click()
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "submitted").text.startswith("submitted job"))
        job = int(driver.find_element(By.ID, "submitted").text.rsplit(" ", 1)[1])
        started = time.time()
        # live: wait for a few logged steps, then the board and the run page while it trains
        row = f"document.getElementById('job-{job}')"
        WebDriverWait(driver, 900).until(lambda d: "loss" in (d.execute_script(f"return {row}?.innerText") or ""))
        shot(driver, args.out, "jobs-live")
        run = driver.execute_script(f"return {row}.querySelector('a[href^=\"/runs/\"]').href")
        driver.get(run)
        time.sleep(2)
        shot(driver, args.out, "run-live")
        driver.get(f"{url}/jobs")
        WebDriverWait(driver, 3600).until(lambda d: state(d, job) in ("succeeded", "failed"))
        print(f"job {job}: {state(driver, job)} after {time.time() - started:.0f} s", flush=True)
        shot(driver, args.out, "jobs")
        driver.get(f"{url}/jobs/{job}")
        shot(driver, args.out, "job")
        driver.get(run)
        time.sleep(1)
        shot(driver, args.out, "run")
        shot(driver, args.out, "run-full", full=True)
        driver.execute_cdp_cmd(
            "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
        )
        driver.refresh()
        time.sleep(1)
        shot(driver, args.out, "run-dark")
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        driver.get(f"{url}/runs")
        shot(driver, args.out, "runs")
        # the example expert's own shape, so the run just recorded is the measured peak beside the estimate
        query = ("model=SmolLM2-135M-Instruct&preset=CPU+RAM+(this+machine)&adapter=dora&rank=12&batch_size=2"
                 "&seq_length=1024&targets=q_proj,k_proj,v_proj,o_proj,up_proj,down_proj")  # fmt: skip
        driver.get(f"{url}/memory?{query}")
        WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.ID, "breakdown"))
        shot(driver, args.out, "memory")
        shot(driver, args.out, "memory-full", full=True)
        for page in ("experts", "workers"):
            driver.get(f"{url}/{page}")
            shot(driver, args.out, page)
    finally:
        driver.quit()
        for process in (worker, server):  # a worker stopping lets its child checkpoint first (up to its grace)
            process.terminate()
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
