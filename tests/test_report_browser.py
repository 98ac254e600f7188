"""report.html in a real browser: headless Chromium loads it, every image decodes, the console is clean,
and nothing is fetched from outside the file. The checker itself is shown to catch a broken page."""
from __future__ import annotations

from pathlib import Path

import pytest

from reports.browser import check_html, find_chromium
from reports.build import build_report

FIX = Path(__file__).parent / "fixtures" / "records"

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium not installed (CI installs Debian's `chromium` in .ci/run)")


def test_report_html_loads_in_chromium(tmp_path):
    written, _ = build_report(FIX / "full", tmp_path, compare=FIX / "partial")
    res = check_html(written["report.html"])
    assert res["console_errors"] == [] and res["requests"] == [] and res["bad_images"] == []
    assert len(res["images"]) == 5
    assert all(i["complete"] and i["width"] > 100 and i["height"] > 100 for i in res["images"])
    assert res["ok"]


def test_checker_catches_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body>'
                    '<img src="data:image/png;base64,AAAA"><img src="missing.png">'
                    '<script>console.error("boom")</script></body></html>')
    res = check_html(page)
    assert not res["ok"]
    assert len(res["bad_images"]) == 2
    assert any("boom" in e for e in res["console_errors"])
    assert any(r.endswith("missing.png") for r in res["requests"])
