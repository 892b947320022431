"""Shared test helpers, in one place: tiny models and an offline tokenizer (no download; the real
loading code runs), dictionaries with random weights, toy activations, and the inputs of a dashboard
site. Test modules import from here, never from each other."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

import saekit
from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.methods import get_method, method_names
from saekit.spec import DictionarySpec

METHODS = method_names()
# Dictionaries written by saekit at stop 12 (format 1), with the inputs and outputs that version computed.
FIXTURES_V1 = Path(__file__).parent / "formats" / "fixtures" / "format_v1"
ENCODER_METHODS = [m for m in METHODS if get_method(m).has_encoder]

WORDS = ("the a cat dog sat on mat and ran to park it was big small red blue happy sad day night "  # noqa: SIM905
         "python code function class return value list dict loop if else print import module").split()
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def tiny_tokenizer(extra_tokens: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS + list(extra_tokens))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def tiny_llama(vocab_size: int, layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_gpt2(vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256)
    return AutoModelForCausalLM.from_config(config).eval()


ATTENTION_FAMILIES = ("llama", "qwen2", "gemma", "gpt2", "gpt_neox")


def tiny_family(family: str, vocab_size: int, layers: int = 2, seed: int = 0):
    """A tiny causal LM of one family (width 32, 4 heads of 8; grouped KV heads where the family has
    them; biases on Qwen2's q/k/v; partial rotary on GPT-NeoX), built offline from a config."""
    from transformers import GemmaConfig, GPTNeoXConfig, Qwen2Config

    if family == "llama":
        return tiny_llama(vocab_size, layers, seed)
    if family == "gpt2":
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=layers,
                                                           n_head=4, n_positions=256)).eval()
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                  pad_token_id=0)
    if family == "qwen2":
        config: Any = Qwen2Config(num_key_value_heads=2, **common)
    elif family == "gemma":
        config = GemmaConfig(num_key_value_heads=1, head_dim=8, **common)
    elif family == "gpt_neox":
        config = GPTNeoXConfig(rotary_pct=0.5, **common)
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def save_tiny(directory: Path, model, tokenizer) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_corpus(directory: Path, n_docs: int = 60, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 120))]
        (directory / f"doc{i:03d}.txt").write_text(" ".join(words))
    return directory


# ----------------------------------------------------------------------------- random dictionaries
D_IN, D_SAE, D_OUT, K = 16, 64, 12, 4
LM, HOOK = "EleutherAI/pythia-70m-deduped", "blocks.3.hook_resid_post"


def method_options(method: str, d_sae: int, k: int = K) -> dict[str, Any]:
    """The method-specific DictionaryConfig fields a test dictionary needs (k, prefixes)."""
    fields = get_method(method).config_fields
    options: dict[str, Any] = {}
    if "k" in fields:
        options["k"] = k
    if "matryoshka_prefixes" in fields:
        options["matryoshka_prefixes"] = [d_sae // 4, d_sae // 2, d_sae]
    return options


def randomize(d: Dictionary, seed: int = 0, scale: float = 0.3, threshold: float = 0.2) -> Dictionary:
    """Random non-zero weights everywhere (zero biases would hide b_dec bugs); positive thresholds, one
    shared value for the methods that estimate one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in d.weights().values():
            tensor.copy_(torch.randn(tensor.shape, generator=g) * scale)
        if "threshold" in d.weights():
            if d.method.folds_decoder_norms:  # a learned per-latent θ
                d.threshold.copy_(torch.rand(d.d_sae, generator=g) * threshold)
            else:
                d.threshold.fill_(threshold * 0.75)
    return d


def make(method: str, d_in: int = 12, d_sae: int = 32, seed: int = 0, **kw: Any) -> Dictionary:
    """A small dictionary with random weights (defaults: d_in 12, d_sae 32, k 4)."""
    kw = {**method_options(method, d_sae), **kw}
    return randomize(Dictionary(DictionaryConfig(method=method, d_in=d_in, d_sae=d_sae, **kw)), seed,
                     threshold=0.4 if method == "jumprelu" else 0.27).eval()


def random_dictionary(method: str, seed: int = 0, unit_norm_decoder: bool = False,
                      dtype: torch.dtype = torch.float32, hookpoint: str = HOOK, target_hookpoint=None,
                      **overrides: Any) -> Dictionary:
    """The format tests' dictionary: D_IN x D_SAE, recorded as HOOK of LM, weights in every tensor."""
    kwargs = {**method_options(method, D_SAE), "transcoder": target_hookpoint is not None, **overrides}
    d = Dictionary(DictionaryConfig(method=method, d_in=D_IN, d_sae=D_SAE, **kwargs))
    d.provenance = Provenance(model_name=LM, hookpoint=hookpoint, target_hookpoint=target_hookpoint)
    randomize(d, seed, threshold=0.2)
    with torch.no_grad():
        if unit_norm_decoder:
            d.normalize_decoder()
    d.meta["trained_by"] = "tests"
    for param in d.parameters():
        param.requires_grad_(False)
    return d.to(dtype).eval()


def inputs(n: int = 128, seed: int = 0, d: int = D_IN) -> torch.Tensor:
    """Off-centre activations, so that b_dec conventions change the outputs."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 2.0 + 1.5


def spec(method: str, d_in: int, d_sae: int, **options: Any) -> DictionarySpec:
    """A DictionarySpec from flat options, with k / prefixes filled in for the methods that need them
    (and dropped, with a given k, for those that do not), so one call serves every method."""
    fields = get_method(method).config_fields
    options = {key: value for key, value in options.items()
               if key not in ("k", "matryoshka_prefixes", "residual_threshold") or key in fields}
    return DictionarySpec.from_options(method=method, d_in=d_in, d_sae=d_sae,
                                       **{**method_options(method, d_sae), **options})


# ------------------------------------------------------------------------------- cache activations
def activations(n: int = 4500, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two hookpoints whose rows are tied (b = a[:, :3] * 2 + row index) so alignment is checkable."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 8, generator=g)
    b = a[:, :3] * 2 + torch.arange(n, dtype=torch.float32)[:, None]
    return {"a": a, "b": b}


def chunks(data: dict[str, torch.Tensor], sizes=(300, 700, 1), start: int = 0):
    """Uneven batches (so they straddle shard boundaries), from token `start` on."""
    n = next(iter(data.values())).shape[0]
    i, k = start, 0
    while i < n:
        step = sizes[k % len(sizes)]
        yield {h: t[i:i + step] for h, t in data.items()}
        i += step
        k += 1


# --------------------------------------------------------------------------------- dashboard site
# One whitespace-free word, so the word-level tiny tokenizer keeps it as a single token.
EVIL = '"><script>window.__pwned=1</script><img/src=x/onerror="window.__pwned=2">'
SITE_D_SAE = 48

# Headless Chromium for the browser tests (scripts/setup_browser.sh installs it), and where their
# screenshots go.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
BROWSER_OUTPUT = Path(os.environ.get("SAEKIT_TEST_OUTPUT",
                                     Path(__file__).resolve().parents[1] / "out" / "test-output")) / "browser"


def make_site_inputs(root: Path) -> tuple[Path, Path, Path]:
    """A tiny model whose vocabulary holds EVIL, a corpus using it, and a TopK dictionary whose
    latent 0 fires hardest on it (so its page must show it)."""
    from saekit.models.hooks import capture
    from saekit.models.loading import load_model
    from saekit.models.sites import resolve_hookpoints
    from saekit.training.config import TrainingConfig

    tokenizer = tiny_tokenizer(extra_tokens=(EVIL,))
    model_dir = save_tiny(root / "model", tiny_llama(len(tokenizer)), tokenizer)
    corpus = write_corpus(root / "corpus", n_docs=80)
    (corpus / "evil.txt").write_text(" ".join(["the cat", EVIL, "sat on the mat"] * 30))
    model, tokenizer = load_model(str(model_dir))
    cfg = saekit.DictionaryConfig(method="topk", d_in=32, d_sae=SITE_D_SAE, k=4)
    d = saekit.Dictionary(cfg)
    d.provenance = Provenance(model_name=str(model_dir), hookpoint="resid_post.0")
    point = resolve_hookpoints(model, ["resid_post.0"])[0]
    ids = torch.tensor([tokenizer("the cat sat on a mat dog ran to park " + EVIL)["input_ids"]])
    acts = capture(model, ids, [point])[point.name][0]
    d.initialize(acts, TrainingConfig().resolved(cfg), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        evil = acts[-1] - d.b_dec
        d.W_enc[:, 0] = 50 * evil / evil.norm()
        d.W_dec[0] = evil / evil.norm()
    dict_dir = saekit.save(d, root / "dict")
    return model_dir, corpus, dict_dir


def make_attention_site_inputs(root: Path) -> tuple[Path, Path, Path, Path]:
    """The dashboard site's tiny model and corpus (EVIL in both), and two attention dictionaries trained
    together from one stream of sequences on it: a sparse attention replacement of layer 1 and a TopK
    SAE on attn_z.1 (per-head outputs). Returns (model dir, corpus, replacement dir, attn_z SAE dir)."""
    from saekit.attention import save as save_attention
    from saekit.attention import sparse_attention_spec
    from saekit.data.stream import ActivationStream
    from saekit.data.tokens import TokenStream
    from saekit.models.loading import load_model

    model_dir, corpus, _ = make_site_inputs(root)
    model, tokenizer = load_model(str(model_dir))
    spec, objective = sparse_attention_spec(model, 1, d_sae=32, k=4, qk_repeat=2, lr=3e-3,
                                            model_name=str(model_dir))
    per_head = DictionarySpec.from_options(method="topk", d_in=32, d_sae=SITE_D_SAE, k=4, lr=3e-3,
                                           hookpoint="attn_z.1", model_name=str(model_dir))
    tokens = TokenStream(tokenizer, str(corpus), context=32, batch_size=8)
    stream = ActivationStream(model, tokens, ["attn_in.1", "attn_out.1", "attn_z.1"], sequences=True)
    replacement, sae = saekit.train(stream, [spec, per_head], objective=[objective, None],
                                    total_tokens=160, batch_size=8, progress=False)
    return model_dir, corpus, save_attention(replacement, root / "lorsa"), saekit.save(sae, root / "attn_z")


def initialized(spec: DictionarySpec, x: torch.Tensor, generator: torch.Generator | None = None) -> Dictionary:
    """The dictionary `spec` describes, initialised from the rows x (no training), with its provenance."""
    d = Dictionary(spec.dictionary, training=spec.training)
    d.provenance = spec.source
    d.initialize(x, spec.training, generator)
    return d


# ------------------------------------------------------------------------- multi-layer transcoders
def random_clt(method: str = "jumprelu", n_layers: int = 3, d: int = 8, d_sae: int = 16, seed: int = 0,
               **options: Any):
    """A cross-layer transcoder with random weights in every tensor (positive thresholds)."""
    from saekit.circuits import CLTConfig, CrossLayerTranscoder

    k = options.pop("k", 3 if method in ("topk", "batchtopk") else None)
    clt = CrossLayerTranscoder(CLTConfig(method=method, n_layers=n_layers, d_in=d, d_sae=d_sae, k=k, **options))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.4).to(p.dtype))
        if method in ("jumprelu", "batchtopk"):
            for layer in range(n_layers):
                clt.threshold[layer].copy_(torch.rand(d_sae, generator=g) * 0.5)
    for p in clt.parameters():
        p.requires_grad_(False)
    return clt.eval()


def random_transcoder_set(method: str = "jumprelu", layers=(0, 1, 2), d: int = 8, d_sae: int = 16, seed: int = 0,
                          **options: Any):
    """A transcoder set (mlp_in.L -> mlp_out.L) with random weights."""
    from saekit.circuits.transcoder_set import TranscoderSet

    dictionaries = []
    for i, layer in enumerate(layers):
        d_ = make(method, d_in=d, d_sae=d_sae, seed=seed + i, transcoder=True, **options)
        d_.provenance = Provenance(model_name="tiny", hookpoint=f"mlp_in.{layer}", target_hookpoint=f"mlp_out.{layer}")
        dictionaries.append(d_)
    return TranscoderSet(list(layers), dictionaries, name="set")


def layer_stream(n_layers: int = 3, d: int = 8, batches: int = 40, rows: int = 256, seed: int = 1,
                 scales=None):
    """Batches {mlp_in.L, mlp_out.L} of a toy 'model' (the same for every seed; the seed draws the rows)
    whose MLP outputs depend on the current and the earlier layers' inputs (so cross-layer decoders
    have something to learn)."""
    mixing = torch.randn(n_layers, d, d, generator=torch.Generator().manual_seed(0)) / d ** 0.5
    g = torch.Generator().manual_seed(seed)
    scales = scales or [1.0] * n_layers
    for _ in range(batches):
        x = torch.randn(rows, n_layers, d, generator=g).relu()
        y = torch.einsum("bld,lde->ble", x, mixing).cumsum(1)
        yield {**{f"mlp_in.{i}": x[:, i] * scales[i] for i in range(n_layers)},
               **{f"mlp_out.{i}": y[:, i] * scales[i] for i in range(n_layers)}}
