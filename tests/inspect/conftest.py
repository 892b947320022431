"""The dashboard site shared by the dashboard and browser tests (built once per module)."""

import pytest

from saekit.cli import main
from tests.helpers import make_attention_site_inputs, make_site_inputs


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
