"""Dashboards in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium;
the `browser` fixture is in conftest.py).

scripts/setup_browser.sh (run by scripts/setup.sh) installs both. Screenshots of the index and of a
latent page go to $SAEKIT_TEST_OUTPUT/browser (default: out/test-output/browser in the repository).
"""

from __future__ import annotations

import pytest

from tests.helpers import BROWSER_OUTPUT as OUTPUT
from tests.helpers import CHROMIUM, DRIVER, EVIL
from tests.helpers import SITE_D_SAE as D_SAE

selenium = pytest.importorskip("selenium", reason="run scripts/setup_browser.sh (selenium missing)")
if not (CHROMIUM and DRIVER):
    pytest.skip("run scripts/setup_browser.sh (chromium / chromedriver missing)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402


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
