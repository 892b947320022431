"""Dashboards in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

scripts/setup_browser.sh (run by scripts/setup.sh) installs both. Screenshots of the index and of a
latent page go to $SAEKIT_TEST_OUTPUT/browser (default: out/test-output/browser in the repository).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import EVIL
from tests.helpers import SITE_D_SAE as D_SAE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
OUTPUT = Path(os.environ.get("SAEKIT_TEST_OUTPUT",
                             Path(__file__).resolve().parents[2] / "out" / "test-output")) / "browser"

selenium = pytest.importorskip("selenium", reason="run scripts/setup_browser.sh (selenium missing)")
if not (CHROMIUM and DRIVER):
    pytest.skip("run scripts/setup_browser.sh (chromium / chromedriver missing)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", "--allow-file-access-from-files"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def column(driver, index: int) -> list[str]:
    return [td.text for td in driver.find_elements(By.CSS_SELECTOR, f"#latents tbody td:nth-child({index})")]


def test_index_loads_sorts_and_searches(browser, site):
    browser.get((site["site"] / "index.html").as_uri())
    assert len(browser.find_elements(By.CSS_SELECTOR, "#latents tbody tr")) == D_SAE
    OUTPUT.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(OUTPUT / "index.png"))
    headers = browser.find_elements(By.CSS_SELECTOR, "#latents th")
    headers[3].click()  # max activation: largest first
    maxima = [float(v) for v in column(browser, 4)]
    assert maxima == sorted(maxima, reverse=True) and maxima[0] > maxima[-1]
    assert column(browser, 1)[0] == "0"  # latent 0 was built to fire hardest
    headers[3].click()  # again: smallest first
    assert [float(v) for v in column(browser, 4)] == sorted(maxima)
    headers[2].click()  # density: largest first
    densities = [float(v) for v in column(browser, 3)]
    assert densities == sorted(densities, reverse=True)
    headers[1].click()  # name: alphabetical, in the browser's own collation
    names = column(browser, 2)
    assert len(set(names)) > 3
    assert browser.execute_script(
        "const n = arguments[0]; return n.every((x, i) => i === 0 || n[i - 1].localeCompare(x) <= 0);",
        names)
    headers[1].click()  # and reversed
    assert column(browser, 2) == names[::-1] or column(browser, 2)[0] == names[-1]
    search = browser.find_element(By.ID, "search")
    search.send_keys("pwned")
    rows = browser.find_elements(By.CSS_SELECTOR, "#latents tbody tr")
    assert 1 <= len(rows) < D_SAE and "0" in column(browser, 1)
    assert any(EVIL in text for text in column(browser, 5))  # shown as text
    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    search.clear()
    search.send_keys("7")  # an id matches exactly, names and tokens by substring
    assert "7" in column(browser, 1)
    search.clear()
    search.send_keys("no-such-latent-name")
    assert browser.find_elements(By.CSS_SELECTOR, "#latents tbody tr") == []
    assert "showing 0 of 0" in browser.find_element(By.ID, "shown").text


def test_latent_page_highlights_tokens_and_runs_nothing(browser, site):
    browser.get((site["site"] / "index.html").as_uri())
    browser.find_element(By.LINK_TEXT, "0").click()
    assert browser.current_url.endswith("latents/0.html")
    marks = browser.find_elements(By.CSS_SELECTOR, "#top mark")
    assert marks, "no highlighted tokens"
    peaks = browser.find_elements(By.CSS_SELECTOR, "#top mark.peak")
    assert peaks and peaks[0].text == EVIL  # the <script> token appears as its literal text
    assert float(peaks[0].get_attribute("title")) > 0
    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    assert browser.find_elements(By.CSS_SELECTOR, "body script, body img") == []
    background = peaks[0].value_of_css_property("background-color")
    assert background.startswith("rgba(255, 110, 0") or background.startswith("rgb(255, 110, 0")
    browser.save_screenshot(str(OUTPUT / "latent-0.png"))
    browser.find_element(By.CSS_SELECTOR, "#near a").click()  # nearest-latent links work
    assert "/latents/" in browser.current_url and browser.find_element(By.TAG_NAME, "h1").text


def test_attention_latent_pages_show_sources_and_heads(browser, attention_site):
    """A sparse attention replacement's latent page highlights the source tokens of its top activations;
    a per-head (attn_z) SAE's page shows its share of decoder norm on each of the 4 heads."""
    pages = sorted((attention_site["lorsa_site"] / "latents").glob("*.html"), key=lambda p: int(p.stem))
    fired = next(p for p in pages if "reads most from" in p.read_text())
    browser.get(fired.as_uri())
    reads = browser.find_elements(By.CSS_SELECTOR, "#reads .read")
    assert reads and browser.find_elements(By.CSS_SELECTOR, "#reads mark.peak")
    assert "QK head" in browser.find_element(By.TAG_NAME, "body").text
    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    OUTPUT.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(OUTPUT / "attention-latent.png"))
    browser.get((attention_site["attn_z_site"] / "latents" / "0.html").as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#heads tr")
    assert len(rows) == 4 and len(browser.find_elements(By.CSS_SELECTOR, "#heads tr.top-head")) == 1
    shares = [float(r.find_elements(By.TAG_NAME, "td")[1].text) for r in rows]
    assert abs(sum(shares) - 1.0) < 0.01
    browser.save_screenshot(str(OUTPUT / "attn-z-latent.png"))
