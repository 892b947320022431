"""The skip-trigram task, the published superposition test, and the gated attention block, each against
an independent computation (a line-by-line port of the reference sampler, a direct loop over heads)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

import saekit
from saekit.attention.gated import GatedAttentionBlock
from saekit.attention.skip_trigrams import SkipTrigrams, ToyAttentionModel, check_superposition
from saekit.config import DictionaryConfig
from saekit.experiments.attention_toy import CPU, train_gated_block


def reference_sample(n: int, rng: random.Random | torch.Generator, length: int = 11) -> list[int]:
    """The reference's `generate_sample`, one token at a time (from Python's RNG, or from a torch generator
    with the reference's own calls)."""
    vocab = 2 * n + 2
    sample = [2 * n + 1]
    zeros = closed = 0

    def randrange(low: int, high: int) -> int:
        if isinstance(rng, random.Random):
            return rng.randrange(low, high)
        return int(torch.randint(low, high, (1,), generator=rng))

    token = randrange(0, vocab)
    while len(sample) < length:
        sample.append(token)
        if token == 0:
            zeros += 1
        if zeros > closed:
            if 0 < sample[-1] < n + 1:
                token = sample[-1] + n
                closed += 1
            else:
                token = randrange(1, vocab)
        else:
            token = randrange(0, vocab)
    return sample


def statistics(sequences: torch.Tensor, n: int) -> torch.Tensor:
    """Token frequencies per position, and the frequency of 0, 1, 2, 3+ closed trigrams per sequence."""
    vocab = 2 * n + 2
    per_position = torch.stack([torch.bincount(sequences[:, p], minlength=vocab) for p in range(11)]).float()
    closed = ((sequences[:, 1:-1] >= 1) & (sequences[:, 1:-1] <= n) & (sequences[:, 2:] == sequences[:, 1:-1] + n))
    return torch.cat([per_position.flatten(), torch.bincount(closed.sum(1).clamp(max=3), minlength=4).float()]) \
        / len(sequences)


@pytest.mark.parametrize("n", [3, 5])
def test_vectorised_sampler_draws_the_reference_distribution(n):
    task = SkipTrigrams(n)
    tokens, closes = task.sample(40_000, torch.Generator().manual_seed(0))
    rng = random.Random(0)
    reference = torch.tensor([reference_sample(n, rng) for _ in range(40_000)])
    assert torch.all(tokens[:, 0] == task.bos)
    # every closing B is followed by its C, and B closes only after an A with no B in between
    follow = closes[:, :-1]
    assert torch.all(tokens[:, 1:][follow] == tokens[:, :-1][follow] + n)
    for row, marks in zip(tokens[:200].tolist(), closes[:200].tolist()):
        for position, closing in enumerate(marks):
            if closing:
                before = row[1:position]
                assert 0 in before and all(not (1 <= t <= n) for t in before[len(before) - before[::-1].index(0):])
    ours, theirs = statistics(tokens, n), statistics(reference, n)
    assert (ours - theirs).abs().max() < 0.012, (ours - theirs).abs().max()


def test_reference_batches_are_the_references_own_tokens():
    """Draw for draw: against the line-by-line port above on torch's generator, and against the first
    rows and a checksum printed by the reference's own code (cmathw/gated-attn `OVIncoherentTask`, 5 skip
    trigrams, dataset seed 0, 2 batches of 50: `data[0, :4]`, Σ data·(position + 1), and the B positions
    it records in `tok_data`)."""
    batches = SkipTrigrams(5).reference_batches(2, 50, seed=0)
    tokens = torch.cat([t for t, _ in batches])
    generator = torch.Generator().manual_seed(0)
    assert tokens.tolist() == [reference_sample(5, generator) for _ in range(100)]
    assert tokens[:4].tolist() == [[11, 8, 3, 5, 0, 9, 4, 9, 7, 7, 1], [11, 5, 2, 0, 6, 9, 7, 6, 11, 11, 11],
                                   [11, 11, 11, 2, 8, 5, 1, 5, 9, 0, 1], [11, 0, 9, 4, 9, 7, 9, 10, 11, 11, 4]]
    assert int((tokens * torch.arange(1, 12)).sum()) == 38259
    closes = torch.cat([c for _, c in batches])
    assert [row.nonzero().flatten().tolist() for row in closes[:4]] == [[6], [], [10], [3]]
    assert int(closes.sum()) == 52
    generator = torch.Generator().manual_seed(1)
    assert SkipTrigrams(3).reference_batches(1, 30, seed=1)[0][0].tolist() == \
        [reference_sample(3, generator) for _ in range(30)]


def outputs_for(task: SkipTrigrams, per_head):
    """head_outputs(tokens) [B, T, H, d] = per_head[b] (a [H, d] tensor) at every B token b, else zero."""
    def head_outputs(tokens):
        out = torch.zeros(*tokens.shape, per_head[1].shape[0], task.vocab)
        for b, value in per_head.items():
            out[tokens == b] = value
        return out
    return head_outputs


def test_the_check_finds_one_head_per_trigram_and_distributed_trigrams():
    task = SkipTrigrams(2)  # B ∈ {1, 2}, C = 3, 4; vocab 6
    e = torch.eye(6)
    # head 0 alone produces C_1, head 1 alone C_2
    separate = {1: torch.stack([3 * e[3], 0.2 * e[5]]), 2: torch.stack([0.2 * e[5], 3 * e[4]])}
    verdict = check_superposition(task, outputs_for(task, separate), learnt_samples=20_000)
    assert verdict.learnt == {1: True, 2: True} and verdict.heads == {1: [0], 2: [1]}
    assert verdict.exactly_one_head == 2 and verdict.passes
    # C_1 only from both heads together: each alone points elsewhere (a distributed trigram)
    shared = {1: torch.stack([2 * e[3] + 3 * e[0] - 3 * e[5], 2 * e[3] - 3 * e[0] + 3 * e[5]]),
              2: torch.stack([0.2 * e[5], 3 * e[4]])}
    verdict = check_superposition(task, outputs_for(task, shared), learnt_samples=20_000)
    assert verdict.heads == {1: [], 2: [1]} and verdict.distributed == [1] and not verdict.passes
    assert verdict.exactly_one_head == 1
    # too weak to beat the B token's own embedding: not learnt, neither single nor distributed
    weak = {1: torch.stack([0.4 * e[3], 0.4 * e[3]]), 2: torch.stack([0.2 * e[5], 3 * e[4]])}
    verdict = check_superposition(task, outputs_for(task, weak), learnt_samples=20_000)
    assert verdict.learnt[1] is False and verdict.distributed == [] and verdict.heads[1] == []


def reference_block(block: GatedAttentionBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference ModifiedAttention forward and gate penalty, with explicit loops over heads."""
    B, T, d = x.shape
    out = torch.zeros(B, T, d)
    gates = []
    for h in range(block.n_heads):
        w_v = block.W_V[h, :, 0] / block.W_V[h, :, 0].norm()
        w_o = block.W_O[h, 0] / block.W_O[h, 0].norm()
        q = x @ block.W_Q[h, :, 0] + block.b_Q[h, 0]
        k = x @ block.W_K[h, :, 0] + block.b_K[h, 0]
        v = x @ w_v + block.b_V[h, 0]
        gq = x @ block.W_gate_Q[h, :, 0] + block.b_gate_Q[h, 0]
        gk = x @ block.W_gate_K[h, :, 0] + block.b_gate_K[h, 0]
        gate = torch.clamp(gq[:, :, None] * gk[:, None, :], 0, 1)
        scores = q[:, :, None] * k[:, None, :]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        z = (torch.softmax(scores, -1) * gate * v[:, None, :]).sum(-1)
        out += z[..., None] * w_o
        gates.append(gate)
    penalty = torch.norm(torch.stack(gates, 1), p=0.6, dim=1).mean()
    return out, penalty


def test_gated_block_matches_the_reference_forward_and_penalty():
    cfg = DictionaryConfig(method="relu", d_in=8, d_sae=4, transcoder=True)
    block = GatedAttentionBlock(cfg)
    block.initialize_from(None, None, None, torch.Generator().manual_seed(0))
    with torch.no_grad():
        block.b_gate_Q.fill_(0.3)
        block.b_gate_K.fill_(0.2)
    x = torch.randn(5, 7, 8)
    out, penalty = reference_block(block, x)
    torch.testing.assert_close(block(x), out, atol=1e-5, rtol=1e-5)
    y = torch.randn(5, 7, 8)
    result = block.replacement_loss(x, y, torch.ones(5, 7, dtype=torch.bool), 0.5)
    torch.testing.assert_close(result.total, (out - y).pow(2).mean() + 0.5 * penalty)
    result.total.backward()  # shut gates (clamped at 0) must not give 0·∞ gradients
    assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)
    assert 0 < result.encoding.mean_l0() <= 4  # heads in use per token
    with pytest.raises(saekit.SaekitError, match="raw activations"):
        block.fold_activation_scale(2.0)


def test_the_toy_pipeline_trains_a_block_through_the_one_trainer():
    """A short run of the whole pipeline: the block's MSE falls to a fraction of the output's mean
    square (what an untrained block, whose output is ~0, pays)."""
    settings = dataclasses.replace(CPU["2H/3ST"], n_batches=4, per_batch=200, block_epochs=60)
    task = SkipTrigrams(3)
    batches = task.batches(settings.n_batches, settings.per_batch, 0)
    model = ToyAttentionModel(task.vocab, 2, generator=torch.Generator().manual_seed(0))
    block, mse = train_gated_block(model, batches, settings)
    with torch.no_grad():
        mean_square = float(model.attention(model.embed(batches[0][0])).pow(2).mean())
    assert isinstance(block, GatedAttentionBlock) and mse < 0.25 * mean_square, (mse, mean_square)


def test_the_compiled_block_trains_as_the_eager_one():
    """`compile_loss` (torch.compile of the step's computation) changes speed, not the function: ten steps
    from the same start on the same batches end at the same weights, to float rounding; a mask that
    leaves tokens out is honoured the same way."""
    settings = dataclasses.replace(CPU["2H/3ST"], n_batches=5, per_batch=100, block_epochs=2)
    task = SkipTrigrams(3)
    batches = task.reference_batches(settings.n_batches, settings.per_batch, 0)
    model = ToyAttentionModel(task.vocab, 2, generator=torch.Generator().manual_seed(0))
    eager, eager_mse = train_gated_block(model, batches, settings)
    compiled, compiled_mse = train_gated_block(model, batches, dataclasses.replace(settings, compile=True))
    assert hasattr(compiled, "_compiled_loss_terms") and not hasattr(eager, "_compiled_loss_terms")
    weights = dict(compiled.named_parameters())
    for name, value in eager.named_parameters():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert abs(eager_mse - compiled_mse) < 1e-5
    x = model.embed(batches[0][0])
    y = model.attention(x).detach()
    mask = torch.rand(x.shape[:2], generator=torch.Generator().manual_seed(3)) < 0.5
    for block in (eager, compiled):
        result = block.replacement_loss(x, y, mask, 0.5)
        by_hand = (block(x) - y).pow(2)[mask].mean()
        torch.testing.assert_close(result.parts["mse"], by_hand.detach(), rtol=1e-5, atol=1e-7)


def test_compiling_without_a_cpp_compiler_is_a_one_line_error(monkeypatch):
    import shutil

    from saekit.errors import SaekitError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    block = GatedAttentionBlock(DictionaryConfig(method="relu", d_in=8, d_sae=4, transcoder=True))
    with pytest.raises(SaekitError, match="needs a C[+][+] compiler") as caught:
        block.compile_loss()
    assert "\n" not in str(caught.value)


def test_a_gated_block_also_trains_on_a_real_layer_from_a_stream_of_sequences(tmp_path):
    """Mechanically the block is not tied to the toy: on a tiny Llama's layer 1 (attn_in.1 -> attn_out.1)
    it trains through the same objective and stream as a sparse attention replacement (docs/attention.md
    says why it is not a good replacement of real layers: rank-1 QK, no RoPE)."""
    from saekit.data.stream import ActivationStream
    from saekit.data.tokens import TokenStream
    from saekit.spec import DictionarySpec
    from saekit.training.config import TrainingConfig
    from saekit.training.replacement import ReplacementObjective
    from tests.helpers import tiny_family, tiny_tokenizer, write_corpus

    tokenizer = tiny_tokenizer()
    model = tiny_family("llama", len(tokenizer))
    corpus = write_corpus(tmp_path / "corpus", n_docs=40)
    tokens = TokenStream(tokenizer, str(corpus), context=16, batch_size=4)
    stream = ActivationStream(model, tokens, ["attn_in.1", "attn_out.1"], sequences=True)
    spec = DictionarySpec(DictionaryConfig(method="relu", d_in=32, d_sae=8, transcoder=True),
                          TrainingConfig(lr=1e-2, normalize_activations="none", sparsity_coefficient=1e-3,
                                         lr_warmup=0.0, lr_decay=0.0, sparsity_warmup=0.0),
                          saekit.Provenance(hookpoint="attn_in.1", target_hookpoint="attn_out.1"))
    objective = ReplacementObjective(lambda spec, device: GatedAttentionBlock(spec.dictionary, spec.training, device))
    log = tmp_path / "log.jsonl"
    (block,) = saekit.train(stream, [spec], objective=[objective], total_tokens=120, batch_size=4,
                            progress=False, log_file=str(log), log_every=1)
    import json

    mse = [json.loads(line)["mse"] for line in log.read_text().splitlines()]
    assert isinstance(block, GatedAttentionBlock) and min(mse[-5:]) < 0.5 * mse[0], mse
    with pytest.raises(saekit.SaekitError, match="no on-disk format"):  # a checkpoint would need one
        saekit.train(stream, [spec], objective=[objective], total_tokens=8, batch_size=4, progress=False,
                     checkpoint_dir=str(tmp_path / "ckpt"))


def test_toy_model_matches_the_reference_attention():
    """The reference Attention (TransformerLens conventions: scores / √d_head, masked with -1e5), looped
    over heads, against the broadcast implementation; logits = embedding + attention output."""
    model = ToyAttentionModel(8, 3, generator=torch.Generator().manual_seed(1))
    tokens = torch.randint(0, 8, (6, 11))
    x = torch.nn.functional.one_hot(tokens, 8).float()
    expected = torch.zeros(6, 11, 8)
    for h in range(3):
        q = x @ model.W_Q[h] + model.b_Q[h]
        k = x @ model.W_K[h] + model.b_K[h]
        v = x @ model.W_V[h] + model.b_V[h]
        scores = (q @ k.transpose(1, 2)).masked_fill(torch.ones(11, 11, dtype=torch.bool).triu(1), -1e5)
        expected += torch.softmax(scores, -1) @ v @ model.W_O[h]
    torch.testing.assert_close(model.attention(x), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model(tokens), x + expected, atol=1e-6, rtol=1e-5)


def write_reference_folder(folder):
    """A 2H/3ST toy model and 4-head block saved as the reference's saved_models holds them (toy keys prefixed
    `attn.` with its IGNORE buffer, block keys as saekit names them); returns (model, block)."""
    from safetensors.torch import save_file

    task = SkipTrigrams(3)
    model = ToyAttentionModel(task.vocab, 2, generator=torch.Generator().manual_seed(0))
    state = {f"attn.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    save_file({**state, "attn.IGNORE": torch.tensor(-1e5)}, str(folder / "toy_model_2H_3ST.st"))
    block = GatedAttentionBlock(DictionaryConfig(method="relu", d_in=task.vocab, d_sae=4, transcoder=True))
    block.initialize_from(None, None, None, torch.Generator().manual_seed(1))
    save_file({k: v.detach().clone() for k, v in block.state_dict().items()}, str(folder / "gated_block_4H_3ST.st"))
    return model, block


def test_the_references_saved_models_load_in_its_own_layout(tmp_path):
    """The reference's layout loads into the same computation; a missing file is one line."""
    from saekit.errors import SaekitError
    from saekit.experiments.attention_toy import PUBLISHED, check_reference, load_reference_block, load_reference_model

    settings = PUBLISHED["2H/3ST"]
    model, block = write_reference_folder(tmp_path)
    (tmp_path / "gated_block_4H_3ST.st").rename(tmp_path / "aside.st")
    with pytest.raises(SaekitError, match="gated_block_4H_3ST.st"):
        check_reference(tmp_path, settings)
    (tmp_path / "aside.st").rename(tmp_path / "gated_block_4H_3ST.st")
    tokens, _ = SkipTrigrams(3).sample(8, torch.Generator().manual_seed(2))
    x = model.embed(tokens)
    loaded = load_reference_model(tmp_path, settings)
    assert torch.allclose(loaded.head_outputs(x), model.head_outputs(x))
    assert torch.allclose(load_reference_block(tmp_path, settings)(x), block(x))
    row = check_reference(tmp_path, settings)
    assert row["toy"] == "2H/3ST" and row["final_mse"] > 0
