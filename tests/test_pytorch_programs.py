"""PyTorch programs, each written once as torch code, run twice: as written (`import torch`) and with lazygrad
substituted by changing only the import lines (`import torch` -> `import lazygrad as torch`, ...). Each program
starts from the same seeded initial state (parameters and data drawn with numpy, copied in with torch's API) and
ends by setting `results`; the two runs' results must agree. Entries named `random_*` come from random draws
(dropout masks, multinomial sampling): lazygrad's generator is not torch's, so only their types and shapes are
compared.

The programs are the issue's eight canonical ones, kept tiny (a few steps, small shapes)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

# only these lines may differ between the two runs
IMPORT_SWAPS = {
    "import torch": "import lazygrad as torch",
    "import torch.nn as nn": "import lazygrad.nn as nn",
    "import torch.nn.functional as F": "import lazygrad.nn.functional as F",
    "import torch.optim as optim": "import lazygrad.optim as optim",
    "from torch.utils.data import DataLoader, TensorDataset": (
        "from lazygrad.utils.data import DataLoader, TensorDataset"
    ),
}

# shared by every program: the seeded initial state, drawn with numpy and copied in through torch's API
PRELUDE = """
import numpy as np
import torch

rng = np.random.default_rng(0)


def seed_parameters(model, scale=0.3):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-scale, scale, tuple(p.shape)).astype(np.float32)))


def dtype_name(dtype):
    return str(dtype).split(".")[-1]
"""

POLYNOMIAL_FIT = """
import math

# "Learning PyTorch with examples": autograd on raw tensors, then nn with a manual update
x = torch.linspace(-math.pi, math.pi, 200)
y = torch.sin(x)
a, b, c, d = (torch.tensor(v, requires_grad=True) for v in (0.1, -0.2, 0.3, -0.05))
raw_losses = []
for t in range(3):
    y_pred = a + b * x + c * x ** 2 + d * x ** 3
    loss = (y_pred - y).pow(2).sum()
    raw_losses.append(loss.item())
    loss.backward()
    with torch.no_grad():
        for param in (a, b, c, d):
            param -= 1e-6 * param.grad
            param.grad = None

p = torch.tensor([1, 2, 3])
xx = x.unsqueeze(-1).pow(p)
model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0, 1))
seed_parameters(model)
loss_fn = torch.nn.MSELoss(reduction="sum")
losses = []
for t in range(3):
    y_pred = model(xx)
    loss = loss_fn(y_pred, y)
    losses.append(loss.item())
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for param in model.parameters():
            param -= 1e-6 * param.grad
linear_layer = model[0]
summary = f"y = {linear_layer.bias.item():.2f} + {linear_layer.weight[:, 0].item():.2f} x"
results = {"raw_losses": raw_losses, "losses": losses, "summary": summary, "final": f"{loss:.0f}"}
"""

CIFAR_CONVNET = """
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.fc1 = nn.Linear(6 * 1 * 1, 8)
        self.fc2 = nn.Linear(8, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


images = torch.from_numpy(rng.standard_normal((12, 3, 12, 12)).astype(np.float32))
labels = torch.from_numpy(rng.integers(0, 10, 12))
order = rng.permutation(12).tolist()  # the batch order, the same in both runs
trainloader = DataLoader(TensorDataset(images, labels), batch_size=4, sampler=order)
net = Net()
seed_parameters(net)
criterion = nn.CrossEntropyLoss()
optimizer = optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
losses = []
for epoch in range(1):
    running_loss = 0.0
    for i, data in enumerate(trainloader, 0):
        inputs, batch_labels = data
        optimizer.zero_grad()
        outputs = net(inputs)
        loss = criterion(outputs, batch_labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        losses.append(loss.item())
correct = 0
with torch.no_grad():
    outputs = net(images)
    _, predicted = torch.max(outputs.data, 1)
    correct += (predicted == labels).sum().item()
results = {"losses": losses, "running_loss": running_loss, "correct": correct, "total": labels.size(0)}
"""

MLP_BATCHNORM_SCHEDULER = """
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

model = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
seed_parameters(model)
x = torch.from_numpy(rng.standard_normal((8, 5)).astype(np.float32))
y = torch.from_numpy(rng.integers(0, 3, 8))
model.eval()  # running statistics and no dropout: deterministic
with torch.no_grad():
    initial = model(x)
model.train()
optimizer = optim.Adam(model.parameters(), lr=0.01)
scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
lrs, losses = [], []
for epoch in range(4):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    scheduler.step()
    lrs.append(scheduler.get_last_lr()[0])
    losses.append(loss.item())
    if epoch == 0:  # the batch statistics of the first forward come before the dropout
        first_running_mean = model[1].running_mean.tolist()
        first_running_var = model[1].running_var.tolist()
results = {
    "initial": initial.tolist(),
    "lrs": lrs,
    "first_running_mean": first_running_mean,
    "first_running_var": first_running_var,
    "batches_tracked": model[1].num_batches_tracked.item(),
    "random_losses": losses,
    "lr_in_group": optimizer.param_groups[0]["lr"],
}
"""

CHAR_GPT = """
import math

import torch.nn as nn
import torch.nn.functional as F

text = "hello world, hello lazy tensors. " * 3
chars = sorted(set(text))
stoi = {ch: i for i, ch in enumerate(chars)}
data = torch.tensor([stoi[ch] for ch in text], dtype=torch.long)
block_size, vocab_size, n_embd = 8, len(chars), 16


class TinyGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        self.ln1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size)
        self.register_buffer("mask", torch.tril(torch.ones(block_size, block_size)))

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.token_embedding(idx) + self.position_embedding(torch.arange(T))
        q, k, v = self.qkv(self.ln1(x)).split(n_embd, dim=2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(n_embd))
        att = att.masked_fill(self.mask[:T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        x = x + self.proj(att @ v)
        x = x + self.mlp(self.ln2(x))
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens):
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -block_size:])
            probs = F.softmax(logits[:, -1, :], dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


model = TinyGPT()
seed_parameters(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
losses, norms = [], []
for step in range(3):
    ix = rng.integers(0, len(data) - block_size, 4)
    xb = torch.stack([data[i : i + block_size] for i in ix])
    yb = torch.stack([data[i + 1 : i + block_size + 1] for i in ix])
    logits, loss = model(xb, yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
    optimizer.step()
    losses.append(loss.item())
model.eval()
sample = model.generate(torch.zeros((1, 1), dtype=torch.long), max_new_tokens=4)
results = {
    "losses": losses,
    "norms": norms,
    "n_params": sum(p.numel() for p in model.parameters()),
    "random_sample_shape": list(sample.shape),
    "random_sample_in_vocabulary": bool(((sample >= 0) & (sample < vocab_size)).all()),
}
"""

INDEXING = """
x = torch.arange(24.0).reshape(4, 6)
y = x.clone()
y[y > 20] = 0
y[:, 1] = -1
y[torch.tensor([1, 3])] += 100
y[[0, 2], [5, 4]] = torch.tensor([7.0, 8.0])
z = torch.zeros(3, 5).scatter_add(1, torch.tensor([[0, 1], [2, 2], [4, 0]]), torch.ones(3, 2))
scores = torch.from_numpy(rng.standard_normal((4, 3)).astype(np.float32))
targets = torch.tensor([2, 0, 1, 1])
picked = scores.gather(1, targets.unsqueeze(1)).squeeze(1)  # the NLL/DQN idiom
results = {
    "rows": x[[0, 2]].tolist(),
    "mask": x[x > 18].tolist(),
    "pairs": x[torch.tensor([0, 1, 3]), torch.tensor([5, 0, 2])].tolist(),
    "negative": x[-1, -2:].tolist(),
    "steps": x[::2, 1::3].tolist(),
    "new_axis": list(x[None, ..., 1].shape),
    "flipped": x[torch.tensor([-1, 0])].tolist(),
    "assigned": y.tolist(),
    "scatter_add": z.tolist(),
    "picked": picked.tolist(),
    "index_select": x.index_select(1, torch.tensor([4, 0])).tolist(),
    "nonzero": (x > 20).nonzero().tolist(),
    "where": torch.where(x > 5, x, torch.zeros_like(x)).tolist(),
    "method_where": x.where(x > 5, -x).tolist(),
    "masked_fill": x.masked_fill(x < 3, -1.0).tolist(),
    "topk": x.topk(2, dim=1).indices.tolist(),
    "argmax": scores.argmax(dim=1).tolist(),
    "take_along_dim": scores.take_along_dim(targets.unsqueeze(1), 1).tolist(),
}
"""

CHECKPOINT = """
import os
import tempfile

import torch.nn as nn
import torch.optim as optim


def make_model():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


x = torch.from_numpy(rng.standard_normal((6, 4)).astype(np.float32))
target = torch.from_numpy(rng.standard_normal((6, 2)).astype(np.float32))


def train(model, optimizer, steps):
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


model = make_model()
seed_parameters(model)
optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
before = train(model, optimizer, 2)
PATH = os.path.join(tempfile.mkdtemp(), "checkpoint.pt")
torch.save(
    {
        "epoch": 2,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": before[-1],
        "names": ["first", "second"],
    },
    PATH,
)
resumed = make_model()
resumed_optimizer = optim.SGD(resumed.parameters(), lr=0.5, momentum=0.9)
checkpoint = torch.load(PATH, weights_only=True)
resumed.load_state_dict(checkpoint["model_state_dict"])
resumed_optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
resumed.train()
after = train(resumed, resumed_optimizer, 2)
results = {
    "before": before,
    "after": after,
    "epoch": checkpoint["epoch"],
    "loss": checkpoint["loss"],
    "names": checkpoint["names"],
    "keys": sorted(checkpoint["model_state_dict"]),
    "lr": resumed_optimizer.param_groups[0]["lr"],
}
"""

CONTAINERS = """
import torch.nn as nn
import torch.optim as optim


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 2), "b": nn.Linear(8, 3)})
        self.extra = nn.ModuleList([nn.Linear(2, 2), nn.Linear(3, 3)])

    def forward(self, x):
        h = self.backbone(x)
        return self.extra[0](self.heads["a"](h)).sum(1) + self.extra[1](self.heads["b"](h)).sum(1)


net = Net()
seed_parameters(net)
for p in net.backbone.parameters():
    p.requires_grad = False
frozen_before = net.backbone[0].weight.detach().clone()
optimizer = optim.SGD(
    [
        {"params": net.heads.parameters()},
        {"params": net.extra.parameters(), "lr": 0.01},
        {"params": net.backbone.parameters()},  # frozen: torch accepts them, and never updates them
    ],
    lr=0.1,
    momentum=0.5,
)
x = torch.from_numpy(rng.standard_normal((5, 4)).astype(np.float32))
target = torch.from_numpy(rng.standard_normal(5).astype(np.float32))
losses = []
for step in range(3):
    optimizer.zero_grad()
    loss = nn.MSELoss()(net(x), target)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
results = {
    "losses": losses,
    "trainable": [name for name, p in net.named_parameters() if p.requires_grad],
    "n_trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
    "group_lrs": [group["lr"] for group in optimizer.param_groups],
    "frozen_unchanged": bool(torch.equal(net.backbone[0].weight, frozen_before)),
    "frozen_grad_is_none": net.backbone[0].weight.grad is None,
    "head_keys": list(net.heads.keys()),
    "state_keys": list(net.state_dict().keys()),
}
"""

FLOAT64_AND_DEVICES = """
import torch.nn as nn

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
x = torch.tensor(np.linspace(0.0, 1.0, 5))  # numpy's float64 stays float64
model = nn.Linear(5, 1).double().to(device)
seed_parameters(model) if False else None
with torch.no_grad():
    model.weight.copy_(torch.from_numpy(np.linspace(-1.0, 1.0, 5)[None]))
    model.bias.fill_(1 / 3)
out = model(x.to(device))
out.sum().backward()
default_before = torch.get_default_dtype()
torch.set_default_dtype(torch.float64)
widened = torch.tensor([1.5]).dtype
torch.set_default_dtype(torch.float32)
results = {
    "dtype": dtype_name(x.dtype),
    "from_numpy": dtype_name(torch.from_numpy(np.zeros(2)).dtype),
    "list_of_floats": dtype_name(torch.tensor([0.5, 1.5]).dtype),
    "legacy_constructor": dtype_name(torch.Tensor(np.zeros(2)).dtype),
    "out": out.item(),
    "out_dtype": dtype_name(out.dtype),
    "grad": model.weight.grad.tolist(),
    "sum_exact": x.sum().item(),
    "float": dtype_name(x.float().dtype),
    "mixed": dtype_name((x.float() + x).dtype),
    "default": dtype_name(default_before),
    "widened": dtype_name(widened),
    "on_device": out.device == device,
    "cpu_numpy": str(x.cpu().numpy().dtype),
    "formatted": f"{out.sum():.6f}",
    "index": device.index,
}
"""

PROGRAMS = {
    "polynomial_fit": POLYNOMIAL_FIT,
    "cifar_convnet": CIFAR_CONVNET,
    "mlp_batchnorm_scheduler": MLP_BATCHNORM_SCHEDULER,
    "char_gpt": CHAR_GPT,
    "indexing": INDEXING,
    "checkpoint": CHECKPOINT,
    "containers": CONTAINERS,
    "float64_and_devices": FLOAT64_AND_DEVICES,
}


def with_lazygrad(program: str) -> str:
    """The program with its import lines swapped for lazygrad's, and no other line changed."""
    return "\n".join(IMPORT_SWAPS.get(line, line) for line in program.split("\n"))


def run(program: str, name: str) -> dict:
    namespace: dict = {"__name__": f"program_{name}"}
    exec(compile(program, f"<{name}>", "exec"), namespace)
    return namespace["results"]


def assert_same_results(ours, theirs, path: str):
    if path.split(".")[-1].startswith("random_"):
        assert type(ours) is type(theirs), f"{path}: {type(ours).__name__} != {type(theirs).__name__}"
        if isinstance(theirs, list):
            assert np.shape(ours) == np.shape(theirs), path
        elif isinstance(theirs, bool):
            assert ours == theirs, path
        return
    if isinstance(theirs, dict):
        assert sorted(ours) == sorted(theirs), path
        for key in theirs:
            assert_same_results(ours[key], theirs[key], f"{path}.{key}")
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs), f"{path}: {ours!r} != {theirs!r}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same_results(a, b, f"{path}[{i}]")
    elif isinstance(theirs, float):
        assert isinstance(ours, float) and math.isclose(ours, theirs, rel_tol=2e-4, abs_tol=1e-5), (
            f"{path}: {ours!r} != {theirs!r}"
        )
    else:
        assert type(ours) is type(theirs) and ours == theirs, f"{path}: {ours!r} != {theirs!r}"


@pytest.mark.backend_independent  # whole programs compile many kernels: once, on the default backend
@pytest.mark.parametrize("name", PROGRAMS)
def test_a_pytorch_program_runs_after_changing_only_the_imports(name):
    program = PRELUDE + PROGRAMS[name]
    ours = with_lazygrad(program)
    changed = [line for line in program.split("\n") if line in IMPORT_SWAPS]
    assert changed and len(ours.split("\n")) == len(program.split("\n"))
    theirs_results = run(program, name)
    torch.set_default_dtype(torch.float32)  # a program that changes it must not leak the change
    assert_same_results(run(ours, name), theirs_results, name)
