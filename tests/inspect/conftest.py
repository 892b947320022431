"""The dashboard site shared by the dashboard and browser tests (built once per module), the `saekit diff`
run shared by the diff and browser tests (once per session), and the headless Chromium the browser tests
drive."""

import pytest
import torch

from saekit.cli import main
from tests.helpers import (
    EVIL,
    make_attention_site_inputs,
    make_site_inputs,
    save_tiny,
    tiny_llama,
    tiny_tokenizer,
    write_corpus,
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    model_dir, corpus, dict_dir = make_site_inputs(root)
    code = main(["dashboard", str(dict_dir), "--tokens", "3000", "--out", str(root / "site"),
                 "--dataset", str(corpus), "--context-size", "32", "--model-batch-size", "8",
                 "--no-progress"])
    assert code == 0
    return {"root": root, "site": root / "site", "model": model_dir, "corpus": corpus, "dict": dict_dir}


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through Selenium; tests that use it skip where scripts/setup_browser.sh has not
    installed it."""
    from tests.helpers import CHROMIUM, DRIVER

    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="run scripts/setup_browser.sh (selenium missing)")
    if not (CHROMIUM and DRIVER):
        pytest.skip("run scripts/setup_browser.sh (chromium / chromedriver missing)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", "--allow-file-access-from-files"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def diff_run(tmp_path_factory):
    """`saekit diff` on a tiny model and a "fine-tune" of it in which one MLP neuron of block 1 reads and
    writes new directions (a feature of the second model only); the vocabulary holds a script-injection
    token."""
    root = tmp_path_factory.mktemp("diff")
    tokenizer = tiny_tokenizer(extra_tokens=(EVIL,))
    base = save_tiny(root / "base", tiny_llama(len(tokenizer), seed=0), tokenizer)
    tuned = tiny_llama(len(tokenizer), seed=0)
    g = torch.Generator().manual_seed(0)
    reads = torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0)
    with torch.no_grad():
        mlp = tuned.model.layers[1].mlp
        mlp.gate_proj.weight[0] = 3 * reads
        mlp.up_proj.weight[0] = 3 * reads
        mlp.down_proj.weight[:, 0] = 0.1 * torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0)
    chat = save_tiny(root / "chat", tuned, tokenizer)
    corpus = write_corpus(root / "c", n_docs=60)
    for i in range(3):  # the held-out split is every 20th document: make sure EVIL is in it
        (corpus / f"doc{19 + 20 * i:03d}.txt").write_text(" ".join([f"{EVIL} the cat"] * 30))
    out = root / "d"
    args = ["diff", "--models", f"base={base}", f"chat={chat}", "--hookpoint", "resid_post.1",
            "--dataset", str(corpus), "--context-size", "32", "--eval-tokens", "1500"]
    code = main([*args, "--tokens", "16384", "--batch-size", "256", "--k", "4", "--lr", "3e-3",
                 "--out", str(root / "t"), "--no-progress"])
    assert code == 0
    # 64 steps do not separate the neuron's latent cleanly (its base block is still ~0.2 of the row:
    # "other"), and which classes a short run reaches is not what these tests check (test_latent_scaling
    # and benchmarks/diffing.py do): the report is made again from the trained crosscoder with the
    # most chat-leaning latent's base block zeroed, so the page must show a chat-only latent.
    import saekit
    from saekit.inspect.diffing import relative_decoder_norms

    crosscoder = saekit.load(root / "t" / "crosscoder")
    chat_latent = int(relative_decoder_norms(crosscoder).argmax())
    with torch.no_grad():
        crosscoder.W_dec[chat_latent, :crosscoder.W_dec.shape[1] // 2] = 0.0  # the base model's block
    saekit.save(crosscoder, root / "edited")
    code = main([*args, "--crosscoder", str(root / "edited"), "--out", str(out), "--no-progress"])
    assert code == 0
    return {"root": root, "out": out, "args": args, "base": base, "chat": chat, "chat_latent": chat_latent,
            "trained": root / "t"}


@pytest.fixture(scope="module")
def layer_site(site):
    """Per-layer dashboards of a cross-layer transcoder on the same tiny model (2 layers)."""
    import saekit
    from tests.helpers import random_clt

    clt = random_clt("relu", n_layers=2, d=32, d_sae=24, seed=3)
    clt.provenance.model_name = str(site["model"])
    saekit.save(clt, site["root"] / "clt")
    code = main(["dashboard", str(site["root"] / "clt"), "--tokens", "2000", "--out", str(site["root"] / "clt_site"),
                 "--dataset", str(site["corpus"]), "--context-size", "32", "--model-batch-size", "8",
                 "--no-progress"])
    assert code == 0
    return site["root"] / "clt_site"


@pytest.fixture(scope="module")
def attention_site(tmp_path_factory):
    """Dashboards of a sparse attention replacement and of a per-head (attn_z) SAE, built by the CLI."""
    root = tmp_path_factory.mktemp("attention-dash")
    model_dir, corpus, lorsa_dir, attn_z_dir = make_attention_site_inputs(root)
    for name, directory in (("lorsa-site", lorsa_dir), ("attn-z-site", attn_z_dir)):
        code = main(["dashboard", str(directory), "--tokens", "2000", "--out", str(root / name),
                     "--dataset", str(corpus), "--context-size", "32", "--model-batch-size", "8",
                     "--top-examples", "5", "--no-progress"])
        assert code == 0
    return {"root": root, "model": model_dir, "corpus": corpus, "lorsa": lorsa_dir, "attn_z": attn_z_dir,
            "lorsa_site": root / "lorsa-site", "attn_z_site": root / "attn-z-site"}
