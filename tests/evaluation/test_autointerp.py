"""Autointerp: window sampling, prompts and parsers, the chat client (retries, timeouts, cache, key) and
the detection score, against a local server that follows the OpenAI chat protocol with a fake model
(tests/chat_server.py). Oracle checks from METHODS-2 §7: a perfect explainer and scorer get 1.0, an
always-"None" scorer gets 10/14, parsers read "1, 3 and 5." and "None"."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import saekit
from saekit.cli import main
from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.evaluation.autointerp import AutointerpOptions, ChatClient, SamplingOptions, autointerp
from saekit.evaluation.autointerp.delphi import DelphiOptions, delphi_detection, parse_binary_list
from saekit.evaluation.autointerp.prompts import parse_explanation, parse_indices, window_text
from saekit.evaluation.autointerp.windows import Window, sample_windows
from saekit.inspect.dashboard_data import Activations
from tests.chat_server import serve
from tests.helpers import WORDS, randomize, save_tiny, tiny_llama, tiny_tokenizer, write_corpus

TARGETS = ["cat", "dog", "python", "loop", "happy"]  # latent j fires exactly on TARGETS[j]


def synthetic_record(tokenizer, rows: int = 300, T: int = 64, seed: int = 0) -> Activations:
    """Token windows of common words with each target word sprinkled in rarely; latent j is 1 + U(0, 1)
    on TARGETS[j] and 0 elsewhere (the record a dashboard pass of such a dictionary would give)."""
    rng = np.random.default_rng(seed)
    vocab = tokenizer.get_vocab()
    common = [vocab[w] for w in WORDS if w not in TARGETS]
    target_ids = [vocab[w] for w in TARGETS]
    ids = rng.choice(common, size=(rows, T))
    ids[:, 0] = tokenizer.bos_token_id
    for token in target_ids:
        hits = rng.random((rows, T - 1)) < 0.004
        ids[:, 1:][hits] = token
    counted = ids != tokenizer.bos_token_id
    flat = ids.reshape(-1)
    pos_parts, lat_parts, val_parts = [], [], []
    for j, token in enumerate(target_ids):
        where = np.nonzero(flat == token)[0]
        pos_parts.append(where)
        lat_parts.append(np.full(len(where), j))
        val_parts.append((1 + rng.random(len(where))).astype(np.float32))
    positions, latents, values = map(np.concatenate, (pos_parts, lat_parts, val_parts))
    order = np.lexsort((-values, latents))
    starts = np.concatenate([[0], np.cumsum(np.bincount(latents, minlength=len(TARGETS)))])
    return Activations(ids, counted, positions[order], values[order], starts, int(counted.sum()))


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def record(tokenizer):
    return synthetic_record(tokenizer)


@pytest.fixture
def server():
    with serve() as s:
        yield s


def client_for(server, tmp_path, model="oracle", **kw) -> ChatClient:
    return ChatClient(server.url, model, cache_dir=tmp_path / "cache", backoff=0.01, **kw)


# --------------------------------------------------------------------------- parsers and prompts
def test_parsers_read_the_specs_examples():
    assert parse_indices("1, 3 and 5.") == [1, 3, 5]
    assert parse_indices("None") == [] and parse_indices(" none. ") == []
    assert parse_indices("2,4") == [2, 4]
    assert parse_indices("1, three") is None and parse_indices("") is None
    assert parse_explanation("This neuron activates on numbers inside dates.") == "numbers inside dates"
    assert parse_explanation("It activates on x; really, it activates on the word 'if'.") == "the word 'if'"
    assert parse_explanation("the letter q") == "the letter q"


def test_marks_wrap_runs_of_active_tokens():
    w = Window([5, 6, 7, 8], [0.0, 2.0, 3.0, 0.0], "top")
    text = window_text(w, lambda t: f" w{t}", mark_above=0.5)
    assert text == "w5 <<w6 w7>> w8"
    assert window_text(w, lambda t: f" w{t}") == "w5 w6 w7 w8"


def test_windows_follow_the_sampling_rules(record):
    T = record.context
    options = SamplingOptions()
    for latent in range(len(TARGETS)):
        w = sample_windows(record, latent, options, np.random.default_rng(latent))
        assert w is not None
        assert [x.kind for x in w.explain] == ["top"] * 10 + ["iw"] * 5
        assert [x.kind for x in w.score] == ["top"] * 2 + ["iw"] * 2 + ["random"] * 10
        for window in w.explain + w.score:
            # 21 tokens around a centre away from the edges; BOS (position 0) is left out of a view
            assert len(window.token_ids) == 2 * options.buffer + 1 - (window.centre < options.buffer)
        top = [x.values[x.centre] for x in w.explain[:10]]
        assert top == sorted(top, reverse=True)  # strongest first
        weakest_top = min(top + [x.values[x.centre] for x in w.score[:2]])
        assert all(0 < x.values[x.centre] < weakest_top for x in w.explain[10:] + w.score[2:4])
        assert all(x.values[x.centre] == max(x.values) for x in w.explain[:10])
    assert T == 64


# --------------------------------------------------------------------------- oracle scores
def test_oracle_explainer_and_scorer_score_one(server, record, tokenizer, tmp_path):
    options = AutointerpOptions(min_firings=15, sampling=SamplingOptions(check_random=True))
    result = autointerp(record, tokenizer, client_for(server, tmp_path), options)
    assert result["scored"] == len(TARGETS) and result["skipped"] == 0
    assert result["autointerp_score"] == 1.0
    assert [r["explanation"] for r in result["latents"]] == [f"the token '{t}'" for t in TARGETS]


def test_always_none_scorer_scores_ten_of_fourteen(server, record, tokenizer, tmp_path):
    result = autointerp(record, tokenizer, client_for(server, tmp_path, model="none"), AutointerpOptions())
    assert result["scored"] == len(TARGETS)
    assert all(abs(r["score"] - 10 / 14) < 1e-12 for r in result["latents"])


def test_unparsable_replies_drop_the_latent(server, record, tokenizer, tmp_path):
    result = autointerp(record, tokenizer, client_for(server, tmp_path, model="garbage"), AutointerpOptions())
    assert result["scored"] == 0 and result["skipped"] == len(TARGETS)
    assert np.isnan(result["autointerp_score"])


def test_rerun_is_answered_from_the_cache(server, record, tokenizer, tmp_path):
    first = client_for(server, tmp_path)
    a = autointerp(record, tokenizer, first, AutointerpOptions(workers=3))
    sent = server.requests
    assert sent == 2 * len(TARGETS) and first.usage.requests == sent and first.usage.cache_hits == 0
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    again = client_for(server, tmp_path)
    b = autointerp(record, tokenizer, again, AutointerpOptions(workers=1))
    assert server.requests == sent  # nothing reached the server
    assert again.usage.requests == 0 and again.usage.cache_hits == sent
    assert again.usage.prompt_tokens == 0 and again.usage.cached_prompt_tokens == first.usage.prompt_tokens
    assert [r["score"] for r in a["latents"]] == [r["score"] for r in b["latents"]]


# --------------------------------------------------------------------------- delphi-style detection
def test_delphi_parser():
    assert parse_binary_list("[1,0,1,1,0]", 5) == [True, False, True, True, False]
    assert parse_binary_list("Sure: [0, 0, 1, 0, 1] done", 5) == [False, False, True, False, True]
    assert parse_binary_list("[1,0]", 5) is None and parse_binary_list("[1,2,0,0,0]", 5) is None
    assert parse_binary_list("no list", 5) is None


def test_delphi_oracle_has_balanced_accuracy_one(server, tokenizer, tmp_path):
    record = synthetic_record(tokenizer, rows=1000, seed=1)
    options = AutointerpOptions(scorer="delphi", workers=2)
    result = autointerp(record, tokenizer, client_for(server, tmp_path), options, latents=[0, 1])
    assert result["scorer"] == "delphi" and result["scored"] == 2
    for latent in result["latents"]:
        assert latent["examples"] == 100 and latent["unparsed"] == 0
        assert latent["balanced_accuracy"] == 1.0 and latent["f1"] == 1.0
    # 1 explanation + 100 examples / 5 per request = 21 requests per latent
    assert server.requests == 42
    silent = delphi_detection(record, 0, client_for(server, tmp_path, model="none"), _text(tokenizer))
    assert silent["balanced_accuracy"] == 0.5 and silent["recall"] == 0.0


def test_delphi_skips_latents_with_too_few_windows(server, record, tokenizer, tmp_path):
    result = delphi_detection(record, 0, client_for(server, tmp_path), _text(tokenizer),
                              DelphiOptions(min_windows=10_000))
    assert "skipped" in result and server.requests == 0


def _text(tokenizer):
    from saekit.inspect.dashboard_data import TokenText

    return TokenText(tokenizer)


# --------------------------------------------------------------------------- client behaviour
MESSAGES = [{"role": "system", "content": "say hi"}, {"role": "user", "content": "hi"}]


def test_retries_transient_errors_then_succeeds(server, tmp_path):
    server.fail_next = 2
    client = ChatClient(server.url, "oracle", retries=3, backoff=0.01)
    reply = client.complete(MESSAGES, 10)
    assert reply.content and client.usage.retries == 2 and server.requests == 3


def test_gives_up_after_bounded_retries(server):
    server.fail_next = 10
    client = ChatClient(server.url, "oracle", retries=2, backoff=0.01)
    with pytest.raises(SaekitError, match="503.*gave up after 3 attempts"):
        client.complete(MESSAGES, 10)
    assert server.requests == 3


def test_times_out_instead_of_hanging(server):
    server.delay = 3.0
    client = ChatClient(server.url, "slow", timeout=0.3, retries=1, backoff=0.01)
    start = time.perf_counter()
    with pytest.raises(SaekitError, match="no answer within 0.3s"):
        client.complete(MESSAGES, 10)
    assert time.perf_counter() - start < 2.5


def test_dead_endpoint_is_one_clear_error():
    client = ChatClient("http://127.0.0.1:9/v1", "oracle", retries=1, backoff=0.01, connect_timeout=2)
    with pytest.raises(SaekitError, match="cannot connect.*is the server running") as error:
        client.complete(MESSAGES, 10)
    assert "\n" not in str(error.value)


def test_key_comes_from_the_environment_and_stays_out_of_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_CHAT_KEY", "sk-secret-123")
    client = ChatClient(server.url, "oracle", api_key_env="MY_CHAT_KEY", cache_dir=tmp_path / "c")
    client.complete(MESSAGES, 10)
    monkeypatch.delenv("MY_CHAT_KEY")
    ChatClient(server.url, "oracle", api_key_env="MY_CHAT_KEY").complete(MESSAGES, 11)
    assert server.auth == ["Bearer sk-secret-123", None]
    stored = "".join(p.read_text() for p in (tmp_path / "c").rglob("*.json"))
    assert "sk-secret" not in stored and '"max_tokens": 10' in stored


def test_protocol_errors_are_named(server):
    with pytest.raises(SaekitError, match="must be an http"):
        ChatClient("localhost:8000", "m")
    bad = ChatClient(server.url.replace("/v1", "/nowhere/x"), "oracle", retries=0)
    with pytest.raises(SaekitError, match="rejected the request \\(404"):
        bad.complete(MESSAGES, 5)


# --------------------------------------------------------------------------- the command, end to end
@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("autointerp")
    tokenizer = tiny_tokenizer()
    model_dir = save_tiny(root / "model", tiny_llama(len(tokenizer)), tokenizer)
    write_corpus(root / "corpus", n_docs=600)  # every 20th document is held out: 30 to read
    d = randomize(Dictionary(DictionaryConfig(method="topk", d_in=32, d_sae=24, k=4)), seed=3).eval()
    d.provenance = Provenance(model_name=str(model_dir), hookpoint="resid_post.0")
    saekit.save(d, root / "dict")
    return root


def test_command_end_to_end_with_cache_hit_on_rerun(capsys, server, tiny_setup, tmp_path):
    args = ["autointerp", str(tiny_setup / "dict"), "--endpoint", server.url, "--model", "none",
            "--dataset", str(tiny_setup / "corpus"), "--context-size", "64", "--tokens", "4000",
            "--latents", "3", "--cache", str(tmp_path / "cache"), "--no-progress",
            "--out", str(tmp_path / "a.json")]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "autointerp score (saebench) 0.714 ± 0.000 over 3 latents" in out
    assert "chat: 6 requests, 0 answered from the cache" in out and "$" in out
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["usage"]["requests"] == 6 and len(saved["latents"]) == 3
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "chat: 0 requests, 6 answered from the cache" in out and "$0.0000" in out
    assert server.requests == 6


def test_command_dead_endpoint_is_one_line(capsys, tiny_setup, tmp_path):
    code = main(["autointerp", str(tiny_setup / "dict"), "--endpoint", "http://127.0.0.1:9/v1", "--model", "m",
                 "--dataset", str(tiny_setup / "corpus"), "--context-size", "64", "--tokens", "2000",
                 "--latents", "2", "--retries", "0", "--cache", str(tmp_path / "c"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot connect" in err
