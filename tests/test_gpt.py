"""lazygrad.models.gpt against the same GPT in PyTorch (tests/torch_gpt.py, nanoGPT's names), built from one state
dict: logits, loss, every gradient, and the parameters after three AdamW steps with gradient clipping.

Tolerance, per element: |lazygrad - torch32| <= 1e-3 * |torch32| + floor, where the floor of each tensor is 10x the
largest difference between torch's own float32 and float64 runs of it. A float32 result near zero (a gradient that
nearly cancels) carries an absolute error of the size of the float32 rounding of its larger terms, which no relative
bound can hold; torch32-vs-torch64 measures exactly that error, and 10x allows for a different (equally valid)
order of summation. Everything else is held to 1e-3 relative."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

import lazygrad
from lazygrad.models.gpt import GPT, GPTConfig

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from torch_gpt import TorchGPT  # noqa: E402  (examples/torch_gpt.py: the same GPT in PyTorch)

CONFIG = dict(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)
BATCH, STEPS, CLIP, LR, WEIGHT_DECAY, BETAS = 3, 3, 0.5, 3e-2, 0.1, (0.9, 0.95)


def torch_run(model, idx, targets):
    """logits, loss, gradients (by name) of one step, then the parameters after STEPS clipped AdamW steps."""
    opt = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS)
    record = {}
    for step in range(STEPS):
        opt.zero_grad()
        logits, loss = model(idx, targets)
        loss.backward()
        if step == 0:
            record["logits"], record["loss"] = logits.detach().clone(), loss.detach().clone()
            record["grads"] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
    record["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    return record


def lazygrad_run(model, idx, targets):
    opt = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS)
    record = {}
    for step in range(STEPS):
        opt.zero_grad()
        logits, loss = model(idx, targets)
        loss.backward()
        # read every step, so that all three steps are one schedule (compiled once: PoCL takes a second a kernel)
        values = (logits.numpy(), loss.numpy(), {n: p.grad.numpy() for n, p in model.named_parameters()})
        if step == 0:
            record["logits"], record["loss"], record["grads"] = values
        lazygrad.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
    record["params"] = {n: p.numpy() for n, p in model.named_parameters()}
    return record


@pytest.fixture
def runs():
    torch.manual_seed(0)
    reference = TorchGPT(**CONFIG, test_init=True)
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    rng = np.random.default_rng(0)
    idx = rng.integers(0, CONFIG["vocab_size"], (BATCH, CONFIG["block_size"]))
    targets = rng.integers(0, CONFIG["vocab_size"], (BATCH, CONFIG["block_size"]))
    targets[0, :3] = -1  # ignored positions (nanoGPT's ignore_index)
    model64 = copy.deepcopy(reference).double()
    torch32 = torch_run(reference, torch.tensor(idx), torch.tensor(targets))
    torch64 = torch_run(model64, torch.tensor(idx), torch.tensor(targets))
    model = GPT(GPTConfig(**CONFIG, dropout=0.0, bias=True))
    model.load_state_dict({k: v.numpy() for k, v in state.items()})
    ours = lazygrad_run(model, lazygrad.tensor(idx), lazygrad.tensor(targets))
    return ours, torch32, torch64


def assert_agrees(name, ours, torch32, torch64):
    expected = np.asarray(torch32, dtype=np.float64)
    floor = 10 * np.abs(expected - np.asarray(torch64, dtype=np.float64)).max() + 1e-12
    np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=floor, err_msg=f"{name} (floor {floor:.2e})")


def test_gpt_matches_torch_logits_loss_every_gradient_and_params_after_three_clipped_adamw_steps(runs):
    # one test, not three: under pytest-xdist each worker that runs a test of the module builds the fixture again
    ours, torch32, torch64 = runs
    assert_agrees("logits", ours["logits"], torch32["logits"], torch64["logits"])
    assert_agrees("loss", ours["loss"], torch32["loss"], torch64["loss"])
    assert set(ours["grads"]) == set(torch32["grads"])  # one tied parameter, named as torch names it
    for name in torch32["grads"]:
        assert_agrees(f"grad {name}", ours["grads"][name], torch32["grads"][name], torch64["grads"][name])
    for name in torch32["params"]:
        assert_agrees(f"param {name}", ours["params"][name], torch32["params"][name], torch64["params"][name])


@pytest.mark.backend_independent
def test_gpt_state_dict_has_nanogpt_names_and_both_tied_keys():
    model = GPT(GPTConfig(**CONFIG))
    keys = set(model.state_dict())
    assert keys == set(TorchGPT(**CONFIG).state_dict())
    assert "lm_head.weight" in keys and "transformer.wte.weight" in keys
    assert model.lm_head.weight is model.transformer.wte.weight
    # nanoGPT without flash attention saves its causal masks as buffers "attn.bias": loading skips them
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, CONFIG["block_size"], CONFIG["block_size"])))
    assert model.load_state_dict(state) == ([], [])


GENERATION_CONFIG = dict(block_size=104, vocab_size=11, n_layer=1, n_head=2, n_embd=16)


def test_cached_generation_compiles_once_for_100_tokens_and_matches_full_forward():
    lazygrad.manual_seed(0)
    model = GPT(GPTConfig(**GENERATION_CONFIG)).eval()
    prompt = np.array([[1, 2, 3, 4]], dtype=np.int64)
    step = model.cached_step(batch=1, temperature=1.0, top_k=1)  # top_k=1: greedy, so the tokens are comparable
    tokens, compiled_later, launched_later = list(prompt[0]), 0, 0
    for position in range(len(tokens) + 100 - 1):
        given = lazygrad.tensor(np.array([[tokens[position]]], dtype=np.int64))
        with lazygrad.profile(timed=False) as p:
            token = step(given, model.position.bind(position))
            token = int(token.numpy()[0, 0])
        if position > 0:
            compiled_later += p.compiled
            launched_later += p.kernels
        if position >= len(tokens) - 1:
            tokens.append(token)
    assert compiled_later == 0, f"{compiled_later} kernels compiled after the first position"
    assert launched_later > 0
    # greedy: each token is the argmax of the uncached forward's logits at the position before it
    sequence = np.array([tokens[:8]], dtype=np.int64)
    logits, _ = model(lazygrad.tensor(sequence), lazygrad.tensor(sequence))  # with targets: logits at every position
    np.testing.assert_array_equal(logits.numpy()[0, 3:7].argmax(-1), sequence[0, 4:8])


def test_cached_forward_matches_torch_and_the_uncached_forward_at_the_first_middle_and_last_slot():
    # the cached path with the position a Variable: one slot written per layer, attention over pos+1 slots; its
    # logits at each position are the full causal forward's at that position (torch's, and lazygrad's own)
    torch.manual_seed(0)
    reference = TorchGPT(**GENERATION_CONFIG, test_init=True)
    model = GPT(GPTConfig(**GENERATION_CONFIG)).eval()
    model.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    block = GENERATION_CONFIG["block_size"]
    sequence = np.random.default_rng(1).integers(0, GENERATION_CONFIG["vocab_size"], (1, block))
    with torch.no_grad():
        expected = reference(torch.tensor(sequence), torch.tensor(sequence))[0].numpy()[0]
    full, _ = model(lazygrad.tensor(sequence), lazygrad.tensor(sequence))
    full = full.numpy()[0]
    np.testing.assert_allclose(full, expected, rtol=1e-4, atol=1e-5)  # the concrete path agrees with torch
    model.allocate_cache(1)
    step = lazygrad.jit(lambda token, position: model.forward_cached(token, position).realize())
    checked = {0: None, block // 2: None, block - 1: None}  # the first, a middle and the last slot
    with lazygrad.no_grad():
        for position in range(block):
            logits = step(lazygrad.tensor(sequence[:, position : position + 1]), model.position.bind(position))
            if position in checked:
                checked[position] = logits.numpy()[0, 0]
    assert step.replays == block - 2  # captured once, replayed for every later position
    for position, logits in checked.items():
        np.testing.assert_allclose(logits, expected[position], rtol=1e-4, atol=1e-5, err_msg=f"position {position}")
        np.testing.assert_allclose(logits, full[position], rtol=1e-4, atol=1e-5, err_msg=f"position {position}")
