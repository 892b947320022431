"""The attribution-graph page in a real headless Chromium (as the dashboards are tested): it loads from
disk, draws the pruned graph's nodes and edges, a click on a node opens its panel (with the dashboard
link for features), a hostile token shows as text and runs nothing, and nodes can be grouped into a
supernode whose grouping is offered for saving."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from saekit.circuits.attribution import attribute
from saekit.inspect.graph_viewer import render_graph_page
from tests.circuits.test_attribution import _prompt, _transcoders
from tests.helpers import CHROMIUM, DRIVER, EVIL, tiny_llama, tiny_tokenizer

selenium = pytest.importorskip("selenium", reason="run scripts/setup_browser.sh (selenium missing)")
if not (CHROMIUM and DRIVER):
    pytest.skip("run scripts/setup_browser.sh (chromium / chromedriver missing)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# `browser`: the headless Chromium of tests/inspect/conftest.py


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph_page")
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer), layers=3, seed=5)
    graph = attribute(model, tokenizer, _transcoders("clt"), _prompt(tokenizer, n=6, seed=1))
    graph.token_strings[3] = EVIL
    graph.logit_strings[0] = EVIL
    graph.prompt = EVIL
    path = render_graph_page(graph, root / "g" / "index.html", dashboards=str(root / "dash"))
    return path, graph


def _ready(driver):
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return window.__graphReady === true"))


def test_page_draws_the_pruned_graph_and_opens_a_panel(browser, page):
    path, graph = page
    html = path.read_text()
    assert EVIL not in html  # only ever escaped
    browser.get(path.as_uri())
    _ready(browser)
    data = json.loads(browser.execute_script("return document.getElementById('graph-data').textContent"))
    nodes = browser.find_elements(By.CSS_SELECTOR, "#graph-svg g.node")
    assert len(nodes) == len(data["nodes"]) > graph.n_pos
    assert len(browser.find_elements(By.CSS_SELECTOR, "#graph-svg line.edge")) == len(data["edges"]) > 0
    assert {n["kind"] for n in data["nodes"]} >= {"feature", "token", "logit"}
    feature = next(n for n in data["nodes"] if n["kind"] == "feature")
    browser.find_element(By.CSS_SELECTOR, f"#node-{feature['id']} circle").click()
    assert browser.find_element(By.ID, "panel-title").text == feature["label"]
    link = browser.find_element(By.ID, "dashboard-link").get_attribute("href")
    assert urllib.parse.unquote(link).endswith(f"dash/layer_{feature['layer']}/latents/{feature['feature']}.html")
    facts = browser.find_element(By.ID, "node-facts").text
    assert str(feature["feature"]) in facts and "activation" in facts


def test_hostile_token_shows_as_text(browser, page):
    path, graph = page
    browser.get(path.as_uri())
    _ready(browser)
    assert browser.find_element(By.ID, "prompt").text == EVIL
    labels = [el.text for el in browser.find_elements(By.CSS_SELECTOR, "text.tok-label")]
    assert EVIL in labels
    browser.find_element(By.CSS_SELECTOR, f"#node-{graph.token_node(3)} rect").click()
    assert EVIL in browser.find_element(By.ID, "node-facts").text
    assert EVIL in browser.find_element(By.ID, "targets").text
    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    assert not browser.find_elements(By.CSS_SELECTOR, "img")


def test_nodes_group_into_a_saved_supernode(browser, page):
    path, _graph = page
    browser.get(path.as_uri())
    _ready(browser)
    browser.execute_script("localStorage.clear()")
    browser.get(path.as_uri())
    _ready(browser)
    data = json.loads(browser.execute_script("return document.getElementById('graph-data').textContent"))
    features = [n for n in data["nodes"] if n["kind"] == "feature"][:2]
    for node in features:
        browser.find_element(By.CSS_SELECTOR, f"#node-{node['id']} circle").click()
        browser.find_element(By.ID, "pick").click()
    assert browser.find_element(By.ID, "sel-count").text == str(len(features))
    browser.find_element(By.ID, "group-name").send_keys("say <b>")
    browser.find_element(By.ID, "group-btn").click()
    assert browser.find_element(By.ID, "groups").text.startswith("say <b>")
    href = browser.find_element(By.ID, "save-groups").get_attribute("href")
    saved = json.loads(urllib.parse.unquote(href.split(",", 1)[1]))
    assert saved == [{"name": "say <b>", "nodes": sorted(n["id"] for n in features)}]
    browser.get(path.as_uri())  # kept across reloads
    _ready(browser)
    assert browser.find_element(By.ID, "groups").text.startswith("say <b>")
