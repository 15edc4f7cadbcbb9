"""The transformer's layers and ops against PyTorch, forward and backward, with equal weights and inputs: Embedding,
LayerNorm, GELU, scaled_dot_product_attention (causal, masks, dropout), MultiheadAttention, TransformerEncoderLayer,
cross_entropy with ignore_index and label_smoothing, masked_fill, tril/triu, topk, multinomial, clip_grad_norm_,
weight tying. Shapes are shared between tests so the kernels are too."""

import numpy as np
import pytest

import lazygrad
import lazygrad.nn.functional as F
from lazygrad import nn
from lazygrad.codegen import layout

torch = pytest.importorskip("torch")
TF = torch.nn.functional

RTOL, ATOL = 1e-3, 1e-5
CONVERT = (torch.tensor, lazygrad.tensor)  # an array as a torch tensor, as a lazygrad tensor
BATCH, LENGTH, WIDTH, HEADS = 2, 5, 8, 2


def pair(*shape, seed=0):
    """The same random float32 input as a torch leaf and a lazygrad leaf, both requiring grad."""
    data = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return torch.tensor(data, requires_grad=True), lazygrad.tensor(data, requires_grad=True)


def assert_close(ours, theirs, name=""):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    ours = ours.numpy() if isinstance(ours, lazygrad.Tensor) else np.asarray(ours)
    assert ours.shape == theirs.shape, f"{name}: {ours.shape} != {theirs.shape}"
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL, err_msg=name)


def check_same_output_and_grads(torch_out, ours_out, torch_leaves, our_leaves):
    assert_close(ours_out, torch_out, "output")
    weights = np.random.default_rng(9).standard_normal(tuple(torch_out.shape)).astype(np.float32)
    (torch_out * torch.tensor(weights)).sum().backward()
    (ours_out * lazygrad.tensor(weights)).sum().backward()
    for i, (t, o) in enumerate(zip(torch_leaves, our_leaves)):
        assert_close(o.grad, t.grad, f"grad of leaf {i}")


def copy_module(torch_module, module):
    module.load_state_dict({k: v.detach().numpy() for k, v in torch_module.state_dict().items()})
    return module


def test_layer_norm_forward_and_backward():
    tx, x = pair(BATCH, LENGTH, WIDTH)
    tw, w = pair(WIDTH, seed=1)
    tb, b = pair(WIDTH, seed=2)
    check_same_output_and_grads(
        TF.layer_norm(tx, (WIDTH,), tw, tb), F.layer_norm(x, (WIDTH,), w, b), (tx, tw, tb), (x, w, b)
    )


def test_layernorm_module_without_bias_has_torch_parameters():
    ours, theirs = nn.LayerNorm(WIDTH, bias=False), torch.nn.LayerNorm(WIDTH, bias=False)
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"weight"}


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_forward_and_backward(approximate):
    tx, x = pair(BATCH, LENGTH, WIDTH)
    check_same_output_and_grads(torch.nn.GELU(approximate)(tx), nn.GELU(approximate)(x), (tx,), (x,))


def float_range():
    """float32 inputs over the whole range: tiny and subnormal magnitudes, the region where erf bends, the tails
    where it is 1 in float32, and the non-finite values."""
    positive = np.concatenate([np.logspace(-45, 1.6, 600), np.linspace(0, 14, 701), [3.4e38]]).astype(np.float32)
    return np.concatenate([positive, -positive, [np.inf, -np.inf, np.nan]]).astype(np.float32)


def test_erf_is_float32_accurate_over_the_whole_float_range():
    # against float64: within a few float32 ulp everywhere (erf(x) ~ 2x/sqrt(pi) near 0 included, where the erfc
    # form 1 - erfc(|x|) had no relative accuracy left: erf(1e-6) was 24% off)
    x = float_range()
    expected = torch.erf(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(lazygrad.tensor(x).erf().numpy(), expected, rtol=3e-7, atol=1e-44)


def test_gelu_is_accurate_over_the_whole_float_range_and_in_its_negative_tail():
    # GELU(x) = x Phi(x): below 0 from erfc(|x / sqrt 2|) directly, not as 1 + erf, which cancels (6% off at a
    # value of 1e-6, x ~ -4.9, and 0 from x ~ -5.6 on)
    x = float_range()
    expected = TF.gelu(torch.tensor(x, dtype=torch.float64)).numpy()
    ours = lazygrad.tensor(x).gelu().numpy()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected))
    finite = np.isfinite(expected)
    assert np.array_equal(ours[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)])
    np.testing.assert_allclose(ours[finite], expected[finite], rtol=1e-6, atol=5e-7)
    tail = np.abs(expected) >= 1e-6
    np.testing.assert_allclose(ours[tail], expected[tail], rtol=4e-3)


def test_embedding_with_padding_idx_sums_row_gradients_and_skips_the_padding_row():
    reference = torch.nn.Embedding(7, WIDTH, padding_idx=2)
    ours = copy_module(reference, nn.Embedding(7, WIDTH, padding_idx=2))
    idx = np.array([[1, 2, 1, 6, 0], [2, 3, 3, 1, 5]], dtype=np.int64)
    check_same_output_and_grads(
        reference(torch.tensor(idx)), ours(lazygrad.tensor(idx)), (reference.weight,), (ours.weight,)
    )
    assert np.all(ours.weight.grad.numpy()[2] == 0)


def attention_inputs():
    shape = (BATCH, HEADS, LENGTH, WIDTH)
    return [pair(*shape, seed=s) for s in (3, 4, 5)]


@pytest.mark.parametrize("mask", ["causal", "bool", "float"])
def test_scaled_dot_product_attention_forward_and_backward(mask):
    (tq, q), (tk, k), (tv, v) = attention_inputs()
    rng = np.random.default_rng(6)
    keep = rng.random((LENGTH, LENGTH)) < 0.7
    keep[:, 0] = True  # every query sees at least one key
    additive = rng.standard_normal((BATCH, 1, LENGTH, LENGTH)).astype(np.float32)
    masks = {"bool": keep, "float": additive}
    kwargs = [{"is_causal": True}] * 2 if mask == "causal" else [{"attn_mask": make(masks[mask])} for make in CONVERT]
    check_same_output_and_grads(
        TF.scaled_dot_product_attention(tq, tk, tv, **kwargs[0]),
        F.scaled_dot_product_attention(q, k, v, **kwargs[1]),
        (tq, tk, tv),
        (q, k, v),
    )


def test_attention_dropout_zeroes_weights_with_probability_p_and_rescales_the_rest():
    # with the identity as values the output is the attention weights themselves; equal queries and keys make every
    # weight 1/LENGTH before dropout
    p = 0.5
    q = lazygrad.zeros(64, 1, LENGTH, WIDTH)
    values = lazygrad.eye(LENGTH).reshape(1, 1, LENGTH, LENGTH).expand(64, 1, LENGTH, LENGTH)
    weights = F.scaled_dot_product_attention(q, q, values, dropout_p=p).numpy()
    kept = weights != 0
    np.testing.assert_allclose(weights[kept], 1 / LENGTH / (1 - p), rtol=1e-6)
    assert abs(kept.mean() - (1 - p)) < 0.06, kept.mean()  # 1600 draws: 5 standard deviations is 0.0625


LONG = 128  # causal attention over this many positions runs in blocks of queries (codegen.layout.causal_query_blocks)


@pytest.mark.backend_independent
def test_causal_attention_runs_in_query_blocks_on_cpus_from_128_positions():
    # the LLVM backend has 16-lane vectors (a CPU); a length the blocks do not divide, a short one, keys of another
    # length (a key/value cache) or a 3-d input keep one block
    assert layout.causal_query_blocks("llvm", (1, HEADS, LONG, WIDTH), (1, HEADS, LONG, WIDTH)) == 2
    for query, key in [((1, 2, 127, 8),) * 2, ((1, 2, 64, 8),) * 2, ((1, 2, LONG, 8), (1, 2, 2 * LONG, 8))]:
        assert layout.causal_query_blocks("llvm", query, key) == 1, (query, key)
    assert layout.causal_query_blocks("llvm", (2, LONG, 8), (2, LONG, 8)) == 1


def test_long_causal_attention_runs_in_query_blocks_and_matches_torch_forward_and_backward():
    shape = (1, HEADS, LONG, WIDTH)  # in blocks where the device has vector lanes (CPUs: both test backends)
    (tq, q), (tk, k), (tv, v) = [pair(*shape, seed=s) for s in (3, 4, 5)]
    check_same_output_and_grads(
        TF.scaled_dot_product_attention(tq, tk, tv, is_causal=True),
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
        (tq, tk, tv),
        (q, k, v),
    )


def test_long_causal_attention_dropout_in_query_blocks_keeps_future_keys_out():
    # the identity as values makes the output the weights; equal queries and keys give row i the weight 1/(i+1) on
    # keys 0..i before dropout, and nothing on the keys after it in whichever block the row falls
    p = 0.5
    q = lazygrad.zeros(1, HEADS, LONG, WIDTH)
    values = lazygrad.eye(LONG).reshape(1, 1, LONG, LONG).expand(1, HEADS, LONG, LONG)
    weights = F.scaled_dot_product_attention(q, q, values, dropout_p=p, is_causal=True).numpy()
    rows, cols = np.indices((LONG, LONG))
    assert np.all(weights[:, :, cols > rows] == 0)
    seen = weights[:, :, cols <= rows]
    kept = seen != 0
    expected = np.broadcast_to(1 / (rows[cols <= rows] + 1) / (1 - p), seen.shape)
    np.testing.assert_allclose(seen[kept], expected[kept], rtol=1e-5)
    assert abs(kept.mean() - (1 - p)) < 0.02, kept.mean()  # 16512 draws: 5 standard deviations is 0.019


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_with_masks_forward_and_backward(batch_first):
    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(WIDTH, HEADS, batch_first=batch_first)
    ours = copy_module(reference, nn.MultiheadAttention(WIDTH, HEADS, batch_first=batch_first))
    shape = (BATCH, LENGTH, WIDTH) if batch_first else (LENGTH, BATCH, WIDTH)
    tx, x = pair(*shape)
    padding = np.zeros((BATCH, LENGTH), dtype=bool)
    padding[1, -2:] = True
    causal = np.triu(np.ones((LENGTH, LENGTH), dtype=bool), 1)
    t_out, t_weights = reference(tx, tx, tx, key_padding_mask=torch.tensor(padding), attn_mask=torch.tensor(causal))
    out, weights = ours(x, x, x, key_padding_mask=lazygrad.tensor(padding), attn_mask=lazygrad.tensor(causal))
    assert_close(weights, t_weights, "averaged attention weights")
    check_same_output_and_grads(
        t_out,
        out,
        (tx, reference.in_proj_weight, reference.out_proj.weight),
        (x, ours.in_proj_weight, ours.out_proj.weight),
    )


@pytest.mark.parametrize("norm_first,activation", [(False, "relu"), (True, "gelu")])
def test_transformer_encoder_layer_forward_and_backward(norm_first, activation):
    torch.manual_seed(1)
    kwargs = dict(dim_feedforward=16, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first)
    reference = torch.nn.TransformerEncoderLayer(WIDTH, HEADS, **kwargs)
    ours = copy_module(reference, nn.TransformerEncoderLayer(WIDTH, HEADS, **kwargs))
    tx, x = pair(BATCH, LENGTH, WIDTH)
    check_same_output_and_grads(
        reference(tx, is_causal=False), ours(x), (tx, reference.linear1.weight), (x, ours.linear1.weight)
    )


def test_cross_entropy_with_ignore_index_and_label_smoothing():
    tx, x = pair(BATCH, 7, LENGTH)  # (N, C, d)
    target = np.random.default_rng(7).integers(0, 7, (BATCH, LENGTH))
    target[0, 1] = target[1, 3] = -1
    check_same_output_and_grads(
        TF.cross_entropy(tx, torch.tensor(target), ignore_index=-1, label_smoothing=0.1),
        F.cross_entropy(x, lazygrad.tensor(target), ignore_index=-1, label_smoothing=0.1),
        (tx,),
        (x,),
    )


@pytest.mark.parametrize("diagonal", [-1, 0, 2])
def test_masked_fill_tril_triu(diagonal):
    tx, x = pair(BATCH, LENGTH, WIDTH)
    mask = np.random.default_rng(8).random((LENGTH, WIDTH)) < 0.5
    assert_close(x.tril(diagonal), tx.tril(diagonal), "tril")
    assert_close(x.triu(diagonal), tx.triu(diagonal), "triu")
    check_same_output_and_grads(
        tx.masked_fill(torch.tensor(mask), -3.0), x.masked_fill(lazygrad.tensor(mask), -3.0), (tx,), (x,)
    )


def test_masked_fill_in_place_and_with_a_0d_value_tensor():
    tx, x = pair(BATCH, LENGTH, WIDTH)
    mask = np.random.default_rng(9).random((LENGTH, WIDTH)) < 0.5
    # in place on a clone (autograd sees the fill), and a 0-d value tensor, which gets the filled places' gradient
    tvalue, value = torch.tensor(2.5, requires_grad=True), lazygrad.tensor(2.5, requires_grad=True)
    check_same_output_and_grads(
        tx.clone().masked_fill_(torch.tensor(mask), tvalue),
        x.clone().masked_fill_(lazygrad.tensor(mask), value),
        (tx, tvalue),
        (x, value),
    )
    with pytest.raises(RuntimeError, match="0-d value"):
        x.masked_fill(lazygrad.tensor(mask), lazygrad.ones(2))


@pytest.mark.parametrize("largest", [True, False])
def test_topk_values_indices_and_gradient(largest):
    tx, x = pair(BATCH, LENGTH, WIDTH)
    theirs, ours = tx.topk(3, dim=1, largest=largest), x.topk(3, dim=1, largest=largest)
    np.testing.assert_array_equal(ours.indices.numpy(), theirs.indices.numpy())
    check_same_output_and_grads(theirs.values, ours.values, (tx,), (x,))


def test_multinomial_frequencies_and_distinct_draws_without_replacement():
    lazygrad.manual_seed(0)
    weights = np.array([[1.0, 0.0, 3.0, 6.0], [5.0, 5.0, 0.0, 0.0]], dtype=np.float32)
    draws = lazygrad.tensor(weights).multinomial(4000, replacement=True).numpy()
    for row, w in zip(draws, weights):
        frequency = np.bincount(row, minlength=4) / len(row)
        expected = w / w.sum()
        # 5 standard deviations of a frequency from 4000 draws
        assert np.all(np.abs(frequency - expected) <= 5 * np.sqrt(expected * (1 - expected) / 4000) + 1e-9)
    distinct = lazygrad.tensor(np.ones((200, 6), dtype=np.float32)).multinomial(6).numpy()
    assert all(sorted(row) == list(range(6)) for row in distinct)
    # without replacement the first draw follows the weights: the weight-6 category of row 0 comes first most often
    first = lazygrad.tensor(np.repeat(weights[:1], 2000, 0)).multinomial(2).numpy()[:, 0]
    assert abs((first == 3).mean() - 0.6) < 5 * np.sqrt(0.24 / 2000)


@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_clip_grad_norm_matches_torch(norm_type):
    grads = [np.random.default_rng(s).standard_normal(n).astype(np.float32) for s, n in ((0, 6), (1, 4))]
    theirs = [torch.zeros(len(g), requires_grad=True) for g in grads]
    ours = [lazygrad.zeros(len(g), requires_grad=True) for g in grads]
    for t, o, g in zip(theirs, ours, grads):
        t.grad, o.grad = torch.tensor(g), lazygrad.tensor(g)
    total_theirs = torch.nn.utils.clip_grad_norm_(theirs, 0.5, norm_type)
    total_ours = nn.utils.clip_grad_norm_(ours, 0.5, norm_type)
    assert_close(total_ours, total_theirs, "total norm")
    for t, o in zip(theirs, ours):
        assert_close(o.grad, t.grad, "clipped gradient")


def test_weight_tying_sums_the_gradient_of_both_uses():
    embedding, head = nn.Embedding(7, WIDTH), nn.Linear(WIDTH, 7, bias=False)
    head.weight = embedding.weight
    t_embedding = torch.nn.Embedding(7, WIDTH)
    t_embedding.weight.data = torch.tensor(embedding.weight.numpy())
    idx = np.array([[1, 2, 1, 6, 0]], dtype=np.int64)
    t_out = TF.linear(t_embedding(torch.tensor(idx)), t_embedding.weight)
    check_same_output_and_grads(
        t_out, head(embedding(lazygrad.tensor(idx))), (t_embedding.weight,), (embedding.weight,)
    )


@pytest.mark.parametrize("dim", [0, -1])
def test_cumsum_forward_and_backward(dim):
    # multinomial's cumulative distribution; cumsum used to sum the elements after each position
    tx, x = pair(BATCH, LENGTH, WIDTH)
    check_same_output_and_grads(tx.cumsum(dim), x.cumsum(dim), (tx,), (x,))
