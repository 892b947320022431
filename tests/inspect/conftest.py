"""The dashboard site shared by the dashboard and browser tests (built once per module)."""

import pytest

from saekit.cli import main
from tests.helpers import make_site_inputs


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    model_dir, corpus, dict_dir = make_site_inputs(root)
    code = main(["dashboard", str(dict_dir), "--tokens", "3000", "--out", str(root / "site"),
                 "--dataset", str(corpus), "--context-size", "32", "--model-batch-size", "8",
                 "--no-progress"])
    assert code == 0
    return {"root": root, "site": root / "site", "model": model_dir, "corpus": corpus, "dict": dict_dir}
