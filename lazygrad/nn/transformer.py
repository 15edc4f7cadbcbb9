"""The layers of a transformer, with PyTorch's constructor arguments, parameter names and initialization:
Embedding, LayerNorm, GELU, MultiheadAttention, TransformerEncoderLayer. Each is a composition of Tensor ops (see
nn.functional's transformer block), so autograd and fusion need nothing special for them."""

from __future__ import annotations

import math

import lazygrad
from lazygrad import dtype as dt
from lazygrad.nn import functional as F
from lazygrad.nn import init
from lazygrad.nn.layers import Dropout, Linear
from lazygrad.nn.module import Module, Parameter
from lazygrad.tensor import Tensor


class Embedding(Module):
    def __init__(
        self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, device=None, dtype=None
    ):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise AssertionError(f"padding_idx {padding_idx} must be within num_embeddings {num_embeddings}")
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings
        self.weight = Parameter(lazygrad.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.normal_(self.weight)  # N(0, 1), as torch; the padding row starts at zero
        if self.padding_idx is not None:
            with lazygrad.no_grad():
                self.weight[self.padding_idx].fill_(0.0)

    def forward(self, input: Tensor) -> Tensor:
        return F.embedding(input, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class LayerNorm(Module):
    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(lazygrad.ones(*shape, device=device, dtype=dtype).contiguous())
            bias_param = Parameter(lazygrad.zeros(*shape, device=device, dtype=dtype).contiguous()) if bias else None
            self.register_parameter("bias", bias_param)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, input: Tensor) -> Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GELU(Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, input: Tensor) -> Tensor:
        return F.gelu(input, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention with one packed in_proj_weight (3E, E) for query, key and value (kdim and vdim
    equal to embed_dim). Masks keep torch's convention for this module: a bool True means "may not attend"."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise AssertionError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if add_bias_kv or add_zero_attn or kdim not in (None, embed_dim) or vdim not in (None, embed_dim):
            raise NotImplementedError("MultiheadAttention: add_bias_kv, add_zero_attn and kdim/vdim != embed_dim")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.in_proj_weight = Parameter(lazygrad.empty(3 * embed_dim, embed_dim, device=device, dtype=dtype))
        in_bias = Parameter(lazygrad.zeros(3 * embed_dim, device=device, dtype=dtype).contiguous()) if bias else None
        self.register_parameter("in_proj_bias", in_bias)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, device=device, dtype=dtype)
        init.xavier_uniform_(self.in_proj_weight)
        if bias:
            init.zeros_(self.out_proj.bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ):
        unbatched = query.ndim == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:  # internally (L, N, E), as torch's reference implementation
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        length, batch, embed = query.shape
        source = key.shape[0]
        if embed != self.embed_dim:
            raise AssertionError(f"MultiheadAttention: query {query.shape} does not end in embed_dim {self.embed_dim}")
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        heads, head_dim = self.num_heads, self.head_dim

        def split_heads(x: Tensor, size: int) -> Tensor:  # (S, N, E) -> (N, H, S, D)
            return x.reshape(size, batch, heads, head_dim).permute(1, 2, 0, 3)

        q = split_heads(F.linear(query, w_q, b_q), length)
        k = split_heads(F.linear(key, w_k, b_k), source)
        v = split_heads(F.linear(value, w_v, b_v), source)
        mask = self._additive_mask(attn_mask, key_padding_mask, is_causal, batch, length, source, q.dtype)
        scores = (q * (1 / math.sqrt(head_dim))) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(-1)
        dropped = F.dropout(weights, self.dropout, self.training) if self.dropout > 0 else weights
        out = (dropped @ v).permute(2, 0, 1, 3).reshape(length, batch, embed)
        out = self.out_proj(out)
        out = out.squeeze(1) if unbatched else out.transpose(0, 1) if self.batch_first else out
        if not need_weights:
            return out, None
        weights = weights.mean(1) if average_attn_weights else weights
        return out, weights.squeeze(0) if unbatched else weights

    def _additive_mask(self, attn_mask, key_padding_mask, is_causal, batch, length, source, dtype):
        """One float mask (N or 1, H or 1, L, S) of 0 and -inf (or the float values given), or None."""
        mask = None
        if attn_mask is None and is_causal:
            attn_mask = lazygrad.ones(length, source, dtype=dt.bool_).triu(1)
        if attn_mask is not None:
            if attn_mask.ndim == 3:  # (N * H, L, S)
                attn_mask = attn_mask.reshape(batch, self.num_heads, length, source)
            mask = _as_additive(attn_mask, dtype)
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (batch, source):
                raise AssertionError(f"key_padding_mask must be {(batch, source)}, got {key_padding_mask.shape}")
            padding = _as_additive(key_padding_mask, dtype).reshape(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask


def _as_additive(mask: Tensor, dtype) -> Tensor:
    """A bool "may not attend" mask as -inf where True, 0 elsewhere; a float mask as it is."""
    if mask.dtype == dt.bool_:
        return mask._select(float("-inf"), 0.0).cast(dtype)
    return mask


class TransformerEncoderLayer(Module):
    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation="relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.self_attn = MultiheadAttention(
            d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, device=device, dtype=dtype
        )
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, device=device, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, device=device, dtype=dtype)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        if isinstance(activation, str):
            if activation not in ("relu", "gelu"):
                raise RuntimeError(f"activation should be relu/gelu, not {activation}")
            activation = F.relu if activation == "relu" else F.gelu
        self.activation = activation

    def forward(
        self, src: Tensor, src_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None, is_causal=False
    ) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._attention_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._feedforward_block(self.norm2(x))
        x = self.norm1(x + self._attention_block(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._feedforward_block(x))

    def _attention_block(self, x, attn_mask, key_padding_mask, is_causal) -> Tensor:
        out = self.self_attn(
            x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False, is_causal=is_causal
        )[0]
        return self.dropout1(out)

    def _feedforward_block(self, x) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))
