"""The `saekit diff` report page in a real headless Chromium: it opens from disk, its tables and plots
render, nothing in it runs, and a screenshot of the whole page goes to $SAEKIT_TEST_OUTPUT/browser."""

from __future__ import annotations

import pytest

from tests.helpers import BROWSER_OUTPUT as OUTPUT
from tests.helpers import CHROMIUM, DRIVER

pytest.importorskip("selenium", reason="run scripts/setup_browser.sh (selenium missing)")
if not (CHROMIUM and DRIVER):
    pytest.skip("run scripts/setup_browser.sh (chromium / chromedriver missing)", allow_module_level=True)

from selenium.webdriver.common.by import By


def test_diff_report_renders_tables_plots_and_latent_cards(browser, diff_run):
    browser.get((diff_run["out"] / "report.html").as_uri())
    assert browser.find_element(By.TAG_NAME, "h1").text == "Model diff: base vs chat at resid_post.1"
    first_table = browser.find_elements(By.TAG_NAME, "table")[0]
    rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in first_table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert [row[:2] for row in rows] == [["base", str(diff_run["base"])], ["chat", str(diff_run["chat"])]]
    counts = next(t for t in browser.find_elements(By.TAG_NAME, "table")
                  if "confirmed by latent scaling" in t.text)
    assert len(counts.find_elements(By.CSS_SELECTOR, "tbody tr")) == 5
    plots = browser.find_elements(By.CSS_SELECTOR, ".plots svg")
    assert len(plots) == 2
    for plot in plots:  # drawn at a real size, with bars
        assert plot.size["width"] > 200 and plot.size["height"] > 100
        assert plot.find_elements(By.CSS_SELECTOR, "path, rect")
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert cards and cards[0].find_elements(By.CSS_SELECTOR, ".ctx mark.peak")
    assert "ν" in cards[0].text and "β (error target)" in cards[0].text
    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    assert browser.find_elements(By.CSS_SELECTOR, "script, body img") == []
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 100, 8000))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(OUTPUT / "diff-report.png"))
    browser.set_window_size(1280, 1000)
