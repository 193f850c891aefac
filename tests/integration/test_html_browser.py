"""summary.html in a real browser: Debian's headless Chromium runs the page's script, and the DOM it
leaves behind (`--dump-dom`) is checked: rows present, the URL's filter/sort/open applied, the chart
shown.

The page reads its view from the URL (?q=&status=&sort=&dir=&open=), which is how this test drives
it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the real-result helpers

from real_results import cache_root  # noqa: E402
from report_runs import CELL_ID, standard_run  # noqa: E402

from pinmatrix.report.write import write_report  # noqa: E402
from pinmatrix.status import CELL_GLYPH, CHECK_GLYPH

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)", pytrace=False)
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

XF_ID = "py3.11-torch2.13.0+cpu-tf5.17.0-xformers0.0.35"


@pytest.fixture(scope="module")
def page(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = standard_run(tmp_path_factory.mktemp("html"), cache_root(request, tmp_path_factory))
    write_report(run)
    return run / "summary.html"


def dom(page: Path, query: str = "") -> str:
    """The DOM after the page's script ran (virtual time lets it finish before the dump)."""
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking",
                           "--disable-extensions", "--no-first-run", "--virtual-time-budget=3000",
                           "--dump-dom", page.as_uri() + query],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-js="ready"' in proc.stdout, (
        "the page's script did not finish:\n" + proc.stderr[-2000:]
    )
    return proc.stdout


def rows(html: str) -> list[tuple[str, bool]]:
    """(cell id, visible) of every cell row, in DOM order."""
    return [(m.group(1), "hidden" not in m.group(2))
            for m in re.finditer(r'<tr class="cell" data-id="([^"]+)"([^>]*)>', html)]


def detail_open(html: str, cell_id: str) -> bool:
    m = re.search(r'<tr class="detail" data-for="' + re.escape(cell_id) + r'"([^>]*)>', html)
    assert m, cell_id
    return "hidden" not in m.group(1)


def test_all_rows_render_and_script_runs(page) -> None:
    html = dom(page)
    assert len(rows(html)) == 5 and all(visible for _, visible in rows(html))
    assert 'id="shown">5 of 5 cells shown' in html
    assert not any(detail_open(html, cid) for cid, _ in rows(html))


def test_status_filter_from_the_url(page) -> None:
    html = dom(page, "?status=broken")
    visible = {cid for cid, v in rows(html) if v}
    assert visible == {XF_ID, "py3.11-torch2.13.0+cpu-tf4.57.6-trl0.99.0"}
    assert 'id="shown">2 of 5 cells shown' in html


def test_text_filter_matches_pins_and_signatures(page) -> None:
    html = dom(page, "?q=" + quote("xformers-extensions-not-loaded"))
    assert {cid for cid, v in rows(html) if v} == {XF_ID}
    html = dom(page, "?q=" + quote("transformers=4.57.6"))
    assert {cid for cid, v in rows(html) if v} == {"py3.11-torch2.13.0+cpu-tf4.57.6-trl0.99.0",
                                                   "py3.11-torch2.13.0+cpu-tf4.57.6-unsloth2026.1.1"}


def test_sort_by_status_descending(page) -> None:
    html = dom(page, "?sort=status&dir=desc")
    order = [cid for cid, _ in rows(html)]
    # infra sorts last ascending
    assert order[0] == "py3.11-torch2.13.0+cpu-tf5.17.0-unsloth2026.1.1"
    assert order[-1] == CELL_ID                                             # works first ascending
    assert 'aria-sort="descending"' in html


def test_open_expands_a_cell_with_its_checks_and_fix(page) -> None:
    html = dom(page, "?open=" + quote(XF_ID))
    assert detail_open(html, XF_ID) and not detail_open(html, CELL_ID)
    detail = html.split(f'data-for="{XF_ID}"', 1)[1].split('<tr class="cell"', 1)[0]
    assert (
        "xformers-extensions-not-loaded" in detail
        and "<b>fix</b>" in detail
        and "Environment" in detail
    )


def test_chart_is_an_embedded_image_or_says_why_not(page) -> None:
    html = dom(page)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert 'id="chart-unavailable"' in html
    else:
        assert re.search(r'<img id="chart" src="data:image/png;base64,', html)


# --- the answer first, and statuses readable without an emoji font ---------------------

NO_EMOJI_FONTS = """<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig><include ignore_missing="yes">/etc/fonts/fonts.conf</include>
<selectfont><rejectfont><glob>*moji*</glob><glob>*Emoji*</glob><glob>*Symbola*</glob>
<pattern><patelt name="color"><bool>true</bool></patelt></pattern></rejectfont></selectfont>
</fontconfig>
"""


def screenshot(page: Path, out: Path, tmp: Path, css: str = "") -> Image.Image:  # noqa: F821
    """A headless Chromium screenshot of `page` (with `css` added), every emoji and colour font
    rejected by fontconfig: what a browser without an emoji font shows."""
    from PIL import Image

    copy = tmp / f"{out.stem}.html"
    copy.write_text(page.read_text().replace("</style>", css + "</style>", 1))
    conf = tmp / "fonts.conf"
    conf.write_text(NO_EMOJI_FONTS)
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking", "--disable-extensions",
                           "--no-first-run", "--hide-scrollbars", "--window-size=1400,1800",
                           "--virtual-time-budget=3000", f"--screenshot={out}", copy.as_uri()],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FONTCONFIG_FILE": str(conf)})
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-2000:]
    return Image.open(out).convert("RGB")


def test_the_answer_comes_first(page) -> None:
    html = dom(page)
    order = [html.index(marker) for marker in (
        "<h2>Which versions work together: transformers × unsloth", "<h2>Recommended pins",
        "<h2>Cells</h2>", "<h2>Throughput</h2>", '<section id="infra">')]
    assert order == sorted(order), order


def test_status_words_are_drawn_without_an_emoji_font(page, tmp_path: Path) -> None:
    """The words beside the glyphs are really drawn: hiding them (same layout, visibility:hidden)
    changes the screenshot's pixels in the pivot and the cells table."""
    from PIL import ImageChops

    fonts = subprocess.run(["fc-list"], capture_output=True, text=True,
                           env={**os.environ, "FONTCONFIG_FILE": str(tmp_path / "fonts.conf")})
    shown = screenshot(page, tmp_path / "shown.png", tmp_path)
    assert "emoji" not in subprocess.run(
        ["fc-match", "-s", "emoji"], capture_output=True, text=True,
        env={**os.environ, "FONTCONFIG_FILE": str(tmp_path / "fonts.conf")}).stdout.lower(), \
        fonts.stdout
    hidden = screenshot(page, tmp_path / "hidden.png", tmp_path,
                        css=".word{visibility:hidden}")
    diff = ImageChops.difference(shown, hidden).convert("L").point(lambda v: 255 if v else 0)
    assert diff.getbbox() is not None, "hiding the status words changed nothing: not drawn"
    changed = diff.histogram()[255]
    assert changed > 500, changed  # several words' worth of glyph pixels, not a stray pixel


def test_no_emoji_is_used_as_a_status_mark(page) -> None:
    """The status marks are CSS dots, so a browser without an emoji font draws no empty boxes; the
    markdown keeps its emoji (GitHub draws them)."""

    html = page.read_text(encoding="utf-8")
    glyphs = {g for g in (*CELL_GLYPH.values(), *CHECK_GLYPH.values()) if g not in ("·",)}
    assert not [g for g in glyphs if g in html], [g for g in glyphs if g in html]
    assert "class='mark m-" in html
