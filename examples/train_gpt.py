"""Train a character-level GPT (lazygrad.models.gpt) on the source text of Python's own standard library, report the
loss on held-out text, and print a sample of generated text.

    python examples/train_gpt.py                 # 4 layers, width 128, context 128: a few minutes
    python examples/train_gpt.py --quick         # a short run, for tests (under a minute on a CPU)
    python examples/train_gpt.py --quick --torch # the same code and settings in PyTorch (examples/torch_gpt.py)

The corpus is every machine's: the .py files of the running interpreter's standard library, in sorted order, read
until the size asked for. Characters outside printable ASCII (rare in that text) become "?"; the last tenth of the
text is held out. Every training batch has the same shape and the step is jitted, so after the first steps each
step replays compiled kernels.
"""

from __future__ import annotations

import argparse
import math
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))  # newline and printable ASCII; everything else is "?"


def load_corpus(num_chars: int) -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= num_chars:
            break
    text = "".join(parts)[:num_chars]
    return "".join(c if c in ALPHABET else "?" for c in text)


def encode(text: str) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(ALPHABET)}
    return np.array([lookup[c] for c in text], dtype=np.int64)


def decode(tokens) -> str:
    return "".join(ALPHABET[int(t)] for t in tokens)


def batches(data: np.ndarray, block_size: int, batch_size: int, rng: np.random.Generator):
    while True:
        starts = rng.integers(0, len(data) - block_size - 1, batch_size)
        x = np.stack([data[s : s + block_size] for s in starts])
        y = np.stack([data[s + 1 : s + block_size + 1] for s in starts])
        yield x, y


def held_out_batches(data: np.ndarray, block_size: int, batch_size: int, count: int):
    """The same evaluation windows for every run: evenly spaced over the held-out text."""
    starts = np.linspace(0, len(data) - block_size - 1, count * batch_size).astype(np.int64)
    for i in range(count):
        chunk = starts[i * batch_size : (i + 1) * batch_size]
        yield (
            np.stack([data[s : s + block_size] for s in chunk]),
            np.stack([data[s + 1 : s + block_size + 1] for s in chunk]),
        )


def progress_bar(step: int, steps: int, loss: float, started: float, width: int = 30) -> None:
    filled = int(width * step / steps)
    rate = step / max(time.perf_counter() - started, 1e-9)
    sys.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] step {step}/{steps} loss {loss:.3f} {rate:.1f} it/s")
    sys.stdout.flush()


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak (nanoGPT's schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_lazygrad(args, train, held_out):
    import lazygrad
    from lazygrad.models.gpt import GPT, GPTConfig

    lazygrad.manual_seed(args.seed)
    config = GPTConfig(
        block_size=args.block_size,
        vocab_size=len(ALPHABET),
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        dropout=args.dropout,
        bias=True,
    )
    model = GPT(config)
    opt = model.configure_optimizers(args.weight_decay, args.lr, (0.9, 0.99))

    @lazygrad.jit
    def train_step(x, y):
        _, loss = model(x, y)
        loss.backward()
        lazygrad.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return loss

    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    loss = float("nan")
    for step, (x, y) in zip(range(args.steps), batches(train, args.block_size, args.batch_size, rng)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        loss_tensor = train_step(lazygrad.tensor(x), lazygrad.tensor(y))
        if step % 10 == 0 or step == args.steps - 1:
            loss = loss_tensor.item()
            progress_bar(step + 1, args.steps, loss, started)
    print()
    train_seconds = time.perf_counter() - started

    model.eval()
    with lazygrad.no_grad():
        losses = [
            model(lazygrad.tensor(x), lazygrad.tensor(y))[1].item()
            for x, y in held_out_batches(held_out, args.block_size, args.batch_size, args.eval_batches)
        ]
    prompt = lazygrad.tensor(encode("def ")[None])
    sample = model.generate(prompt, args.sample_tokens, temperature=0.8, top_k=20).numpy()[0]
    return float(np.mean(losses)), decode(sample), train_seconds


def train_torch(args, train, held_out):
    import torch

    sys.path.insert(0, str(HERE))
    from torch_gpt import TorchGPT

    torch.manual_seed(args.seed)
    model = TorchGPT(args.block_size, len(ALPHABET), args.n_layer, args.n_head, args.n_embd, dropout=args.dropout)
    opt = model.configure_optimizers(args.weight_decay, args.lr, (0.9, 0.99))
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    for step, (x, y) in zip(range(args.steps), batches(train, args.block_size, args.batch_size, rng)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        _, loss = model(torch.tensor(x), torch.tensor(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % 10 == 0 or step == args.steps - 1:
            progress_bar(step + 1, args.steps, loss.item(), started)
    print()
    train_seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        losses = [
            model(torch.tensor(x), torch.tensor(y))[1].item()
            for x, y in held_out_batches(held_out, args.block_size, args.batch_size, args.eval_batches)
        ]
    sample = model.generate(torch.tensor(encode("def ")[None]), args.sample_tokens, temperature=0.8, top_k=20)[0]
    return float(np.mean(losses)), decode(sample), train_seconds


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (2 layers, width 64, context 64)")
    parser.add_argument("--torch", action="store_true", help="train the same model with PyTorch instead")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--corpus-chars", type=int, default=2_000_000)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--sample-tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.block_size = 150, 16, 64
        args.n_layer, args.n_head, args.n_embd = 2, 4, 64
        args.warmup, args.corpus_chars, args.eval_batches, args.sample_tokens = 20, 300_000, 4, 40
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    text = load_corpus(args.corpus_chars)
    data = encode(text)
    split = int(len(data) * 0.9)
    train, held_out = data[:split], data[split:]
    framework = "torch" if args.torch else "lazygrad"
    print(f"corpus: {len(text)} characters of the standard library's source, vocabulary {len(ALPHABET)}")
    print(f"{framework}: {args.n_layer} layers, width {args.n_embd}, {args.n_head} heads, context {args.block_size}")
    run = train_torch if args.torch else train_lazygrad
    loss, sample, seconds = run(args, train, held_out)
    print(f"trained {args.steps} steps in {seconds:.1f} s")
    print(f"held-out loss: {loss:.4f}")
    print("sample:\n" + sample)


if __name__ == "__main__":
    main()
