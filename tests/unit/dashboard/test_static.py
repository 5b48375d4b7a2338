"""The vendored chart library is the pinned npm release, unchanged, with its licence, served locally."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi.testclient import TestClient

from expertkit.dashboard.app import DashboardConfig, build_dashboard

VENDOR = Path(__file__).resolve().parents[3] / "src" / "expertkit" / "dashboard" / "static" / "vendor" / "uplot"
PINNED = {  # uplot@1.6.32 from the npm registry (scripts/vendor_uplot.sh prints these)
    "uPlot.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
    "uPlot.min.css": "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
}


def test_the_vendored_files_are_the_pinned_release_with_their_licence() -> None:
    for name, digest in PINNED.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest
    assert "MIT License" in (VENDOR / "LICENSE").read_text() and "Leon Sorokin" in (VENDOR / "LICENSE").read_text()
    assert "1.6.32" in (VENDOR / "VENDORED.md").read_text()


def test_pages_load_nothing_from_another_origin(tmp_path: Path) -> None:
    app = build_dashboard(DashboardConfig(queue_url=f"sqlite:///{tmp_path / 'q.db'}"))
    web = TestClient(app, base_url="http://127.0.0.1")
    served = web.get("/static/vendor/uplot/uPlot.iife.min.js")
    assert served.status_code == 200 and served.content == (VENDOR / "uPlot.iife.min.js").read_bytes()
    for path in ("/jobs", "/runs", "/experts", "/workers"):
        text = web.get(path).text
        assert "http://" not in text.replace("http://127.0.0.1", "") and "https://" not in text, path
