"""Class 3: names read from files (hookpoints, shard folders, checksummed file names) never lead outside
their folder, and never to a device file."""

import json
import os

import numpy as np
import pytest

import saekit
from saekit.data.cache import write_cache
from saekit.data.cache.format import manifest_checksum
from tests.faults.conftest import one_line_error
from tests.helpers import make


def cache(path, hookpoints=("a",)):
    g = np.random.default_rng(0)
    batches = [{h: __import__("torch").from_numpy(g.standard_normal((512, 8)).astype("f4")) for h in hookpoints}
               for _ in range(4)]
    write_cache(iter(batches), path, hookpoints=list(hookpoints), model="m", shard_tokens=1024)
    return path


def rewrite_manifest(path, edit):
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    manifest["manifest_sha256"] = manifest_checksum(manifest)  # anyone can recompute it
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_hostile_hookpoint_names_in_a_cache_keep_dictionaries_inside_out(tmp_path, cli):
    path = cache(tmp_path / "c", hookpoints=("a", "b"))

    def rename(manifest):
        manifest["hookpoints"][1]["name"] = "../../escaped"
        for shard in manifest["shards"]:
            shard["files"]["../../escaped"] = shard["files"].pop("b")

    rewrite_manifest(path, rename)
    code, _, errors = cli("train", "--from-cache", path, "--method", "topk", "--k", "2", "--d-sae", "16",
                          "--total-tokens", "1024", "--batch-size", "256", "--out", tmp_path / "out/run",
                          "--no-progress")
    assert code == 0, errors
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out" / "escaped").exists()
    assert (tmp_path / "out" / "run" / "_.._.._escaped" / "topk-k2-16-2" / "cfg.json").exists()


@pytest.mark.parametrize("folder", ["../outside", "/tmp", ".", "a/b"])
def test_hostile_shard_folders_in_a_cache_manifest_are_refused(tmp_path, cli, folder):
    path = cache(tmp_path / "c")
    rewrite_manifest(path, lambda m: m["hookpoints"][0].update(dir=folder))
    code, _, errors = cli("cache", "verify", path)
    one_line_error(code, errors, "not a plain folder name")
    with pytest.raises(saekit.SaekitError, match="not a plain folder name"):
        saekit.data.cache.open_cache(path)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "../sibling.bin", ".hidden"])
def test_checksummed_names_in_a_dictionary_cannot_leave_its_folder(tmp_path, name):
    saekit.save(make("relu"), tmp_path / "d")
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    manifest["sha256"][name] = "0" * 64
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(saekit.SaekitError, match="refusing file name"):
        saekit.load(tmp_path / "d")


def test_a_checksummed_device_file_is_refused_at_once(tmp_path):
    """`/dev/zero` behind a checksummed name used to make a load read forever."""
    saekit.save(make("relu"), tmp_path / "d")
    os.symlink("/dev/zero", tmp_path / "d" / "zero.bin")
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    manifest["sha256"]["zero.bin"] = "0" * 64
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(saekit.SaekitError, match="not a regular file"):
        saekit.load(tmp_path / "d")


def test_links_in_pages_are_http_or_local_paths_only(tmp_path, cli):
    from saekit.inspect.html import link

    page = tmp_path / "report.html"
    assert link("https://example.org/site", page) == "https://example.org/site"
    assert link(tmp_path / "site", page, site_index=True) == "site/index.html"
    for hostile in ("javascript:alert(1)", "data:text/html,<script>", "file:///etc/passwd", "JAVASCRIPT:x"):
        with pytest.raises(saekit.SaekitError, match="only http"):
            link(hostile, page)
