"""The gated-attention toy (Mathwin, Akar, Sharkey 2024; METHODS-2.md §4.1): OV-incoherent skip trigrams,
an attention-only one-layer transformer that must superpose them across too few heads, and the published
test of whether each trigram is produced by exactly one head.

Task with n trigrams: A = 0, B ∈ {1..n}, C_b = b + n, BOS = 2n + 1, vocabulary = d_model = 2n + 2.
Sequences of 11 tokens: BOS, then tokens uniform over all 2n + 2 ids while no trigram is open; after an
A, uniform over [1, 2n + 2) until a B appears, whose next token is forced to C_B (the trigram closes).
Every trigram shares its A, so a head's value (read from A) cannot tell the trigrams apart: the output
must come from how strongly B's query attends to A, and with d_head = 1 a head writes one direction.
Sampling is vectorised over sequences (the reference draws one token at a time in Python); it draws
from the same distribution, not the reference's random stream.

The toy model: identity embedding and unembedding, one attention layer with no norm, no MLP, no
output bias; logits = embedding + attention output. Heads have d_head = 1; Q, K, V, O and the Q, K, V
biases start Xavier-normal.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

N_POSITIONS = 11
IGNORE = -1e5  # the reference's masked score (finite, like TransformerLens)


@dataclass
class SkipTrigrams:
    """`n` OV-incoherent skip trigrams (see the module doc)."""

    n: int
    n_positions: int = N_POSITIONS

    @property
    def vocab(self) -> int:
        return 2 * self.n + 2

    @property
    def bos(self) -> int:
        return 2 * self.n + 1

    def sample(self, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(tokens [count, n_positions] long, closes [count, n_positions] bool): `closes` marks each B
        that completes a trigram (its next token is, or would be, its C)."""
        tokens = torch.empty(count, self.n_positions, dtype=torch.long)
        closes = torch.zeros(count, self.n_positions, dtype=torch.bool)
        tokens[:, 0] = self.bos
        open_ = torch.zeros(count, dtype=torch.bool)
        forced = torch.full((count,), -1, dtype=torch.long)
        for position in range(1, self.n_positions):
            free = torch.randint(0, self.vocab, (count,), generator=generator)
            after_a = torch.randint(1, self.vocab, (count,), generator=generator)
            token = torch.where(open_, after_a, free)
            token = torch.where(forced >= 0, forced, token)
            tokens[:, position] = token
            is_b = open_ & (token >= 1) & (token <= self.n)
            closes[:, position] = is_b
            opens = ~open_ & (forced < 0) & (token == 0)
            forced = torch.where(is_b, token + self.n, torch.full_like(forced, -1))
            open_ = (open_ & ~is_b) | opens
        return tokens, closes

    def batches(self, n_batches: int, per_batch: int, seed: int) -> list[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        return [self.sample(per_batch, generator) for _ in range(n_batches)]

    def reference_batches(self, n_batches: int, per_batch: int, seed: int) -> list[tuple[Tensor, Tensor]]:
        """The reference's own batches (cmathw/gated-attn `OVIncoherentTask` at dataset seed `seed`), draw for
        draw: it samples one token at a time with `torch.randint(low, vocab, (1,))` from the generator
        seeded with `seed`, so making the same calls in the same order gives the same tokens. A gated
        block trained on these and initialised from the same seed starts from exactly the published run.
        Slow (a Python loop, ~10 s per 100k sequences); `batches` draws the same distribution at once."""
        generator = torch.Generator().manual_seed(seed)

        def draw(low: int) -> int:
            return int(torch.randint(low, self.vocab, (1,), generator=generator))

        result = []
        for _ in range(n_batches):
            rows, marks = [], []
            for _ in range(per_batch):
                row, closes = [self.bos], [False]
                following, opened, forced = draw(0), False, False
                while len(row) < self.n_positions:
                    token = following
                    row.append(token)
                    is_b = opened and not forced and 1 <= token <= self.n
                    closes.append(is_b)
                    opened = (opened and not is_b) or (not opened and not forced and token == 0)
                    # the reference draws the next token even after the last position (the draw is unused)
                    forced = is_b
                    following = token + self.n if is_b else draw(1 if opened else 0)
                rows.append(row)
                marks.append(closes)
            result.append((torch.tensor(rows, dtype=torch.long), torch.tensor(marks, dtype=torch.bool)))
        return result


def softmax(scores: Tensor, dim: int = -1) -> Tensor:
    """softmax written out: over the toy's ≤ 11 keys it runs ~2.5x faster than `Tensor.softmax` on a
    CPU (forward and backward), which is most of a toy step."""
    exp = (scores - scores.amax(dim, keepdim=True).detach()).exp()
    return exp / exp.sum(dim, keepdim=True)


class ToyAttentionModel(nn.Module):
    """Attention-only, one layer, identity embed/unembed, d_head 1 (see the module doc)."""

    def __init__(self, d_model: int, n_heads: int, d_head: int = 1, generator: torch.Generator | None = None):
        super().__init__()
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_head

        def xavier(*shape: int) -> nn.Parameter:
            return nn.Parameter(nn.init.xavier_normal_(torch.empty(shape), generator=generator))

        self.W_Q, self.W_K, self.W_V = (xavier(n_heads, d_model, d_head) for _ in range(3))
        self.W_O = xavier(n_heads, d_head, d_model)
        self.b_Q, self.b_K, self.b_V = (xavier(n_heads, d_head) for _ in range(3))

    def embed(self, tokens: Tensor) -> Tensor:
        return nn.functional.one_hot(tokens, self.d_model).float()

    def head_outputs(self, x: Tensor) -> Tensor:
        """Each head's output [B, T, H, d] for embeddings x [B, T, d]."""
        q = torch.einsum("btd,hde->bthe", x, self.W_Q) + self.b_Q
        k = torch.einsum("btd,hde->bthe", x, self.W_K) + self.b_K
        v = torch.einsum("btd,hde->bthe", x, self.W_V) + self.b_V
        # [B, T_q, T_k, H] by broadcasting (d_head is 1 here: a product of scalars, not a matmul)
        scores = (q[:, :, None] * k[:, None]).sum(-1) / self.d_head ** 0.5
        T = x.shape[1]
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)[..., None]
        pattern = softmax(scores.masked_fill(future, IGNORE), dim=2)
        z = (pattern[..., None] * v[:, None]).sum(2)  # [B, T_q, H, d_head]
        return torch.einsum("bqhe,hed->bqhd", z, self.W_O)

    def attention(self, x: Tensor) -> Tensor:
        return self.head_outputs(x).sum(2)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        return x + self.attention(x)


def train_toy_model(task: SkipTrigrams, n_heads: int, batches: list[tuple[Tensor, Tensor]], epochs: int,
                    lr: float, seed: int, progress: bool = False) -> ToyAttentionModel:
    """The model the gated block is fitted to: Adam on next-token cross-entropy over every position
    (input tokens[:, :-1], targets tokens[:, 1:]), `epochs` passes over `batches`, constant lr."""
    from tqdm.auto import tqdm

    model = ToyAttentionModel(task.vocab, n_heads, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in tqdm(range(epochs), desc=f"toy model {n_heads}H/{task.n}ST", disable=not progress, leave=False):
        for tokens, _ in batches:
            logits = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, task.vocab), tokens[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@dataclass
class SuperpositionCheck:
    """The published verdict per trigram (B token): which heads alone produce it."""

    learnt: dict[int, bool]  # argmax = C_B at > 99% of the B's trigram positions (100k sequences)
    heads: dict[int, list[int]]  # heads that produce B under every ablation of the other heads
    distributed: list[int]  # learnt, produced by no single head, but by the heads together

    @property
    def exactly_one_head(self) -> int:
        """Trigrams produced by exactly one head."""
        return sum(1 for b, heads in self.heads.items() if len(heads) == 1)

    @property
    def passes(self) -> bool:
        """The published criterion: every trigram learnt and none distributed over heads."""
        return all(self.learnt.values()) and not self.distributed


@torch.no_grad()
def check_superposition(task: SkipTrigrams, head_outputs, learnt_samples: int = 100_000,
                        ablation_samples: int = 1_000, threshold: float = 0.99) -> SuperpositionCheck:
    """`check_no_attn_super` of the reference, vectorised. `head_outputs(tokens)` gives the per-head
    attention outputs [B, T, H, d] of a model (the embedding is added for the full prediction).

    1. B is learnt when argmax(logits) = C_B at > 99% of its trigram positions (last position excluded)
       in `learnt_samples` sequences (seed 1).
    2. On `ablation_samples` sequences (seed 42) holding exactly one trigram of that B, head h produces B
       when, for every non-empty subset of the other heads removed, the argmax of the remaining heads'
       summed outputs at B's position is C_B, in > 99% of them.
    3. A learnt B that no single head produces, whose mean summed head output still points at C_B, is
       "distributed"."""
    tokens, closes = task.sample(learnt_samples, torch.Generator().manual_seed(1))
    learnt: dict[int, bool] = {}
    mean_outputs: dict[int, Tensor] = {}
    chunk = 10_000
    correct = torch.zeros(task.n + 1)
    total = torch.zeros(task.n + 1)
    summed = torch.zeros(task.n + 1, task.vocab)
    for start in range(0, learnt_samples, chunk):
        part, marks = tokens[start:start + chunk], closes[start:start + chunk].clone()
        heads = head_outputs(part)  # [b, T, H, d]
        logits = nn.functional.one_hot(part, task.vocab).float() + heads.sum(2)
        marks[:, -1] = False
        b_ids = part[marks]
        hit = logits[marks].argmax(-1) == b_ids + task.n
        correct.index_add_(0, b_ids, hit.float())
        total.index_add_(0, b_ids, torch.ones_like(b_ids, dtype=torch.float))
        summed.index_add_(0, b_ids, heads[marks].sum(1))
    for b in range(1, task.n + 1):
        learnt[b] = bool(total[b] > 0 and correct[b] / total[b] > threshold)
        mean_outputs[b] = summed[b] / total[b].clamp_min(1)

    tokens, closes = task.sample(ablation_samples, torch.Generator().manual_seed(42))
    single = closes.sum(1) == 1
    tokens, closes = tokens[single], closes[single]
    position = closes.float().argmax(1)
    b_of_sample = tokens[torch.arange(len(tokens)), position]
    outputs = head_outputs(tokens)[torch.arange(len(tokens)), position]  # [n, H, d]
    n_heads = outputs.shape[1]
    by_head: dict[int, list[int]] = {b: [] for b in range(1, task.n + 1)}
    for head in range(n_heads):
        others = [h for h in range(n_heads) if h != head]
        removals = [set(c) for r in range(1, len(others) + 1) for c in itertools.combinations(others, r)]
        if not removals:
            continue
        keep = torch.tensor([[h not in removed for h in range(n_heads)] for removed in removals]).float()
        kept = torch.einsum("sh,nhd->nsd", keep, outputs)  # [n, subsets, d]
        survives = (kept.argmax(-1) == (b_of_sample + task.n)[:, None]).all(1)  # every subset
        for b in range(1, task.n + 1):
            rows = b_of_sample == b
            if learnt[b] and bool(rows.any()) and float(survives[rows].float().mean()) > threshold:
                by_head[b].append(head)
    distributed = [b for b in range(1, task.n + 1) if learnt[b] and not by_head[b]
                   and int(mean_outputs[b].argmax()) == b + task.n]
    return SuperpositionCheck(learnt, by_head, distributed)
