"""The digest's HTML part (and the weekly summary's) renders in headless Chromium: a screenshot
of a digest with cases in all three groups is non-trivial. Skipped without a Chromium binary
(the CI entry point installs Debian's ``chromium``)."""
from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from inbox_bot import digests, summary
from inbox_bot.store import Store
from tests.test_digests import AIKO, BEN, NOW, make_cfg, policy, seed_digest_cases
from tests.test_summary import WEEK, seed_week

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, HEIGHT = 1000, 1400


def chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no Chromium binary found (looked for {', '.join(BROWSERS)}); "
                "install Debian's 'chromium' package to run the rendering test")


def screenshot(html: str, tmp_path: Path, name: str) -> bytes:
    page = tmp_path / f"{name}.html"
    page.write_text(html, encoding="utf-8")
    png = tmp_path / f"{name}.png"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={png}",
           f"--window-size={WIDTH},{HEIGHT}", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, timeout=120)
    assert png.is_file(), f"no screenshot; chromium exited {done.returncode}: {done.stderr[-2000:]!r}"
    return png.read_bytes()


def assert_non_trivial(png: bytes) -> None:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 20_000                      # a blank page compresses to a few kB
    import matplotlib.image
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    rgb = pixels[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 0.05, "the screenshot is a single colour"
    # coloured group headings and buttons, not just black text on white
    saturated = (rgb.max(axis=1) - rgb.min(axis=1)) > 0.3
    assert saturated.mean() > 0.001
    # content down the page, not only a header
    lower_half = pixels[HEIGHT // 2:, :, :3].reshape(-1, 3)
    assert lower_half.std(axis=0).max() > 0.05


@pytest.fixture()
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'render.sqlite3'}")
    store.migrate()
    yield store
    store.dispose()


@pytest.mark.parametrize("staff", [BEN, AIKO], ids=["en", "ja"])
def test_the_digest_html_renders_in_headless_chromium(store, tmp_path, staff):
    chromium()
    seed_digest_cases(store)
    with store.session() as s:
        d = digests.collect_digest(s, make_cfg(), policy(), staff, NOW)
        mail = digests.build_digest(s, make_cfg(), policy(), staff, NOW)
    assert all(d.count(g) > 0 for g in digests.GROUPS)
    assert_non_trivial(screenshot(mail.html, tmp_path, f"digest-{staff.split('@')[0]}"))


def test_the_weekly_summary_html_renders_with_its_chart(store, tmp_path):
    chromium()
    seed_week(store)
    with store.session() as s:
        mail = summary.build_summary(s, make_cfg(), policy(), WEEK)
    assert_non_trivial(screenshot(mail.html_with_embedded_images(), tmp_path, "summary"))
