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


def _steering_report(name: str):
    """A small hand-made report (the page is under test here, not the numbers)."""
    import torch

    from saekit.inspect.steering_eval import Concept
    from saekit.inspect.steering_improve import Screen, SteeringReport

    methods = ["actadd", "sae_reconstruction", "pruned", "best_latent"]
    curves = {m: [{"scale": s, "strength": s * (i + 1) / 4, "cost": s / 10} for s in (0.5, 1.0, 2.0)]
              for i, m in enumerate(methods)}
    prompts = ["I think that", EVIL]
    screen = Screen(1.0, 0.1, [0.0, 0.05], [{"latent": 3, "coefficient": 0.5, "contribution_norm": 0.5,
                                             "effect": 0.4, "relevant": True},
                                            {"latent": 9, "coefficient": -0.2, "contribution_norm": 0.2,
                                             "effect": -0.1, "relevant": False}])
    return SteeringReport(Concept(name, ["a " + EVIL], ["b"], [EVIL]), "resid_post.0", 3.0, [0.5, 1.0, 2.0], 1.0,
                          {m: torch.ones(4) for m in methods}, curves, screen, 0.1, {m: 0.2 for m in methods},
                          "best_latent", prompts, {m: [f"{m} says {EVIL}", "ok"] for m in ["unsteered", *methods]},
                          {m: [0.5, 0.25] for m in ["unsteered", *methods]}, 0.75, [5], 2.0)


def test_steering_page_shows_curves_and_generations_side_by_side(browser, tmp_path):
    from saekit.inspect.steering_page import write_steering_report

    page = write_steering_report([_steering_report("anger"), _steering_report(EVIL)], tmp_path / "steer", EVIL)
    browser.get(page.as_uri())
    OUTPUT.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(OUTPUT / "steering.png"))
    figure = browser.find_element(By.CSS_SELECTOR, ".figure svg")
    assert figure.size["width"] > 400 and figure.size["height"] > 150
    tables = browser.find_elements(By.CSS_SELECTOR, "table.generations")
    assert len(tables) == 2
    headers = [th.text for th in tables[0].find_elements(By.CSS_SELECTOR, "th")]
    assert headers == ["prompt", "unsteered", "ActAdd (difference of means)", "SAE reconstruction",
                       "irrelevant latents removed", "best single latent"]
    rows = tables[1].find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 2 and EVIL in rows[1].text and f"pruned says {EVIL}" in rows[0].text
    assert browser.find_element(By.ID, "concept-1").text == EVIL  # the name as text, not markup
    assert "★" in browser.find_elements(By.CSS_SELECTOR, "table.summary")[0].text
    assert browser.execute_script("return typeof window.__pwned") == "undefined"


def test_layer_dashboards_navigate_and_show_decoder_norms(browser, layer_site):
    """A CLT's site: the layer list, a layer's index (its script fills the table), a latent page with the
    norm of the latent's decoder into each later layer."""
    browser.get((layer_site / "index.html").as_uri())
    links = browser.find_elements(By.CSS_SELECTOR, "#layers a")
    assert [a.text for a in links] == ["layer 0", "layer 1"]
    links[0].click()
    assert browser.current_url.endswith("layer_0/index.html")
    rows = browser.find_elements(By.CSS_SELECTOR, "#latents tbody tr")
    assert len(rows) == 24
    browser.find_element(By.LINK_TEXT, "0").click()
    cells = browser.find_elements(By.CSS_SELECTOR, "#decoder-norms td:first-child")
    assert [c.text for c in cells] == ["layer 0", "layer 1"]  # layer 0's latents write into layers 0 and 1
    bars = browser.find_elements(By.CSS_SELECTOR, "#decoder-norms div")
    widths = [b.size["width"] for b in bars]
    assert max(widths) > 0 and len(widths) == 2
    browser.save_screenshot(str(OUTPUT / "clt-latent.png"))


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
