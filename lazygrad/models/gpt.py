"""A GPT-2-style decoder-only transformer: token and position embeddings, pre-LayerNorm blocks of causal
self-attention and a GELU MLP, a final LayerNorm, and a head tied to the token embedding.

The module tree, parameter names, initialization, forward signature and optimizer grouping follow Andrej Karpathy's
nanoGPT (https://github.com/karpathy/nanoGPT, model.py: GPTConfig, CausalSelfAttention, MLP, Block, GPT), so a
state dict saved from that model loads unchanged (`load_state_dict`; the causal-mask buffers `attn.bias` that its
non-flash attention registers are ignored). As there, `lm_head.weight` and `transformer.wte.weight` are one
Parameter: the state dict lists it under both names, and its gradient is the sum of both uses.

Generation with a key/value cache (`generate(..., use_cache=True)`): each layer keeps its keys and values for the
whole context in buffers (batch, heads, block_size, head_dim). One step reads one token and its position, a
`lazygrad.Variable` in [0, block_size - 1]: it writes the new key and value into the one slot `cache[:, :, pos:pos+1]`
and attends over the view `cache[:, :, :pos+1]`, whose length is symbolic. The kernels take the position as an int
argument (loop bounds and offsets use it), so the step is one graph at every position: under `lazygrad.jit` it is
compiled and captured once and replayed for every token, including the prompt, which is fed through the same step
one token at a time, and its attention reads pos+1 slots, not the whole cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import lazygrad
from lazygrad import nn
from lazygrad.nn import functional as F
from lazygrad.symbolic import BoundVariable, Variable
from lazygrad.tensor import Tensor


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in the Linears and LayerNorms, as GPT-2


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # query, key, value at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, C) -> query, key, value, each (B, n_head, T, head_dim)."""
        batch, length, channels = x.shape
        # (B, T, 3, heads, head_dim), then one slice each: the gradient puts the three back along a dim of their own,
        # so that its kernel reads each head's gradient in rows (through split's flat (B, T, 3C) view it indexed them
        # with divides and remainders, on scalars)
        qkv = self.c_attn(x).reshape(batch, length, 3, self.n_head, channels // self.n_head)
        return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))

    def _merge(self, y: Tensor) -> Tensor:
        batch, heads, length, head_dim = y.shape
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(batch, length, heads * head_dim)))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._heads(x)
        dropout = self.dropout if self.training else 0.0
        return self._merge(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True))

    def forward_cached(self, x: Tensor, cache: tuple[Tensor, Tensor], position) -> Tensor:
        """One token x (B, 1, C) at `position` (a bound lazygrad.Variable): write its key and value into slot
        `position` of the cache (B, H, block_size, D), attend to slots 0..position (a view of symbolic length)."""
        q, k, v = self._heads(x)
        cache_k, cache_v = cache
        cache_k[:, :, position : position + 1].assign(k)  # one slot written, not the whole cache
        cache_v[:, :, position : position + 1].assign(v)
        keys, values = cache_k[:, :, : position + 1], cache_v[:, :, : position + 1]
        return self._merge(F.scaled_dot_product_attention(q, keys, values))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: Tensor, cache, position) -> Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), cache, position)
        return x + self.mlp(self.ln_2(x))


class _TransformerTrunk(nn.Module):
    """nanoGPT's `transformer` ModuleDict: wte, wpe, drop, h, ln_f (the names its state dict uses)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = _TransformerTrunk(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one Parameter, two uses
        self._init_weights()
        self._cache: list[tuple[Tensor, Tensor]] | None = None
        self._cached_step = None

    def _init_weights(self) -> None:
        """nanoGPT's: N(0, 0.02) for Linear and Embedding weights, zero biases, and N(0, 0.02/sqrt(2 n_layer)) for
        the projections that feed the residual stream (GPT-2's scaled initialization)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
        lazygrad.realize(*self.parameters())

    def get_num_params(self, non_embedding: bool = True) -> int:
        count = sum(p.numel() for p in self.parameters())
        return count - self.transformer.wpe.weight.numel() if non_embedding else count

    def forward(self, idx: Tensor, targets: Tensor | None = None):
        """idx (B, T) token indices. With targets (B, T): (logits (B, T, vocab), mean cross-entropy ignoring -1).
        Without: (logits of the last position (B, 1, vocab), None), as nanoGPT."""
        batch, length = idx.shape
        if length > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {length}: block_size is {self.config.block_size}")
        # positions 0..T-1 read the first T rows of wpe: a slice, not a one-hot product as for token indices
        positions = self.transformer.wpe.weight[:length]
        x = self.transformer.drop(self.transformer.wte(idx) + positions)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, -1:, :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def load_state_dict(self, state_dict, strict: bool = True):
        # nanoGPT without flash attention registers its causal mask as a buffer "attn.bias": not a parameter here
        kept = {key: value for key, value in state_dict.items() if not key.endswith(".attn.bias")}
        return super().load_state_dict(kept, strict)

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas=(0.9, 0.95), device_type=None):
        """AdamW with two param groups, as nanoGPT: weight decay on the matrices (2-d and up: Linear weights and
        embeddings), none on biases and LayerNorm parameters."""
        params = list(self.parameters())
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return lazygrad.optim.AdamW(groups, lr=learning_rate, betas=betas)

    # ---- generation ----

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None, use_cache=True):
        """Append max_new_tokens sampled tokens to idx (B, T) and return the (B, T + max_new_tokens) tensor.
        Without the cache, each token runs the whole (cropped) sequence through forward, as nanoGPT."""
        if not use_cache:
            for _ in range(max_new_tokens):
                context = idx if idx.shape[1] <= self.config.block_size else idx[:, -self.config.block_size :]
                logits, _ = self(context)
                token = _sample(logits[:, -1, :], temperature, top_k)
                idx = Tensor.cat([idx, token], dim=1).realize()
            return idx
        tokens = idx.numpy().astype(np.int64)
        if tokens.shape[1] + max_new_tokens > self.config.block_size:
            raise ValueError(
                f"cached generation of {tokens.shape[1]} + {max_new_tokens} tokens exceeds block_size "
                f"{self.config.block_size} (the cache holds one context; generate without the cache to slide it)"
            )
        step = self.cached_step(tokens.shape[0], temperature, top_k)
        prompt_length = tokens.shape[1]
        out, token = [tokens], None
        for position in range(prompt_length + max_new_tokens - 1):
            # the prompt goes through the same step one token at a time; its samples are not used
            current = lazygrad.tensor(tokens[:, position : position + 1]) if position < prompt_length else token
            token = step(current, position)
            if position >= prompt_length - 1:
                out.append(token.numpy())
        return lazygrad.tensor(np.concatenate(out, axis=1))

    def cached_step(self, batch: int, temperature: float = 1.0, top_k: int | None = None):
        """A function (token (B, 1) int64, position: an int or a bound `self.position`) -> the next token (B, 1),
        reading and writing this model's key/value cache; a jitted step with the position a Variable inside. Built
        once per (batch, temperature, top_k, training mode: dropout is captured with the step). A step at position p
        reads slots 0..p only, so what earlier generations left in later slots is never seen."""
        key = (batch, temperature, top_k, self.training)
        if self._cached_step is not None and self._cached_step[0] == key:
            return self._cached_step[1]
        self.allocate_cache(batch)

        @lazygrad.jit
        def jitted(token: Tensor, position) -> Tensor:
            with lazygrad.no_grad():
                return _sample(self.forward_cached(token, position)[:, -1, :], temperature, top_k).realize()

        def step(token: Tensor, position) -> Tensor:
            if not isinstance(position, BoundVariable):
                position = self.position.bind(int(position))
            return jitted(token, position)

        step.jitted = jitted
        self._cached_step = (key, step)
        return step

    def allocate_cache(self, batch: int) -> None:
        """Fresh key/value buffers (batch, n_head, block_size, head_dim) per layer for forward_cached."""
        config = self.config
        shape = (batch, config.n_head, config.block_size, config.n_embd // config.n_head)
        self._cache = [
            (lazygrad.zeros(*shape).contiguous().realize(), lazygrad.zeros(*shape).contiguous().realize())
            for _ in range(config.n_layer)
        ]

    def forward_cached(self, token: Tensor, position) -> Tensor:
        """The logits (B, 1, vocab) after token (B, 1) at `position` (a bound `self.position`), given the keys and
        values of positions 0..position-1 in the cache (allocate_cache), to which this token's are added. Run it
        under no_grad (a view at a Variable's position has no backward)."""
        if self._cache is None or self._cache[0][0].shape[0] != token.shape[0]:
            raise RuntimeError(f"forward_cached: allocate_cache({token.shape[0]}) first (token of shape {token.shape})")
        # the position's row of wpe: a view at a symbolic offset (an embedding's one-hot product would read all
        # block_size rows)
        x = self.transformer.wte(token) + self.transformer.wpe.weight[position].reshape(1, 1, -1)
        for block, cache in zip(self.transformer.h, self._cache):
            x = block.forward_cached(x, cache, position)
        return self.lm_head(self.transformer.ln_f(x))

    @property
    def position(self) -> Variable:
        """The position of a cached generation step: a Variable in [0, block_size - 1]."""
        return Variable("position", 0, self.config.block_size - 1)


def _sample(logits: Tensor, temperature: float, top_k: int | None) -> Tensor:
    """One token per row of logits (B, vocab), as nanoGPT samples: scale by 1/temperature, keep the top_k
    largest, softmax, multinomial. Returns (B, 1) int64."""
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = (logits < kth)._select(float("-inf"), logits)
    return logits.softmax(-1).multinomial(1)
