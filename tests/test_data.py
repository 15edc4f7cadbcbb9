"""lazygrad.utils.data against torch.utils.data: the same batches from the same indices, and the CIFAR-style
tutorial loop (TensorDataset, shuffled DataLoader, a small convnet, CrossEntropyLoss, SGD) with torch's loss curve.
"""

import numpy as np
import pytest
import torch
import torch.utils.data as torch_data
from helpers import assert_same, rand

import lazygrad
from lazygrad import nn
from lazygrad.utils import data


def labelled(n: int = 10):
    features, labels = rand(n, 3), np.arange(n) % 4
    return (
        data.TensorDataset(lazygrad.tensor(features), lazygrad.tensor(labels)),
        torch_data.TensorDataset(torch.tensor(features), torch.tensor(labels)),
    )


@pytest.mark.parametrize("batch_size, drop_last", [(4, False), (4, True), (5, False)])
def test_dataloader_in_order_gives_torchs_batches(batch_size, drop_last):
    ours, theirs = labelled()
    loader = data.DataLoader(ours, batch_size=batch_size, drop_last=drop_last)
    reference = torch_data.DataLoader(theirs, batch_size=batch_size, drop_last=drop_last)
    assert len(loader) == len(reference)
    batches, expected = list(loader), list(reference)
    assert len(batches) == len(expected)
    for (x, y), (tx, ty) in zip(batches, expected):
        assert_same(x, tx)
        assert_same(y, ty)


@pytest.mark.backend_independent
def test_shuffle_is_a_permutation_reproducible_with_a_seeded_generator():
    ours, _ = labelled(12)
    ours = data.TensorDataset(lazygrad.tensor(np.arange(12)))

    def order(seed):
        loader = data.DataLoader(ours, batch_size=5, shuffle=True, generator=data.Generator().manual_seed(seed))
        return [int(v) for (batch,) in loader for v in batch.numpy()]

    assert sorted(order(0)) == list(range(12))
    assert order(0) == order(0) and order(0) != order(1)


@pytest.mark.backend_independent
def test_default_collate_of_tuples_and_dicts_matches_torch():
    samples = [{"x": np.full(2, i, np.float32), "label": i, "weight": 0.5 * i, "name": f"s{i}"} for i in range(3)]
    ours, theirs = data.default_collate(samples), torch_data.default_collate(samples)
    assert set(ours) == set(theirs) and ours["name"] == theirs["name"]
    for key in ("x", "label", "weight"):
        assert_same(ours[key], theirs[key])
    pairs = [(np.ones(2, np.float32) * i, i) for i in range(3)]
    for a, b in zip(data.default_collate(pairs), torch_data.default_collate(pairs)):
        assert_same(a, b)


@pytest.mark.backend_independent
def test_random_split_and_subset_partition_the_dataset():
    ours = data.TensorDataset(lazygrad.tensor(np.arange(10)))
    parts = data.random_split(ours, [0.5, 0.3, 0.2], generator=data.Generator().manual_seed(3))
    assert [len(p) for p in parts] == [len(p) for p in torch_data.random_split(range(10), [0.5, 0.3, 0.2])]
    values = sorted(int(p[i][0].item()) for p in parts for i in range(len(p)))
    assert values == list(range(10))
    with pytest.raises(ValueError, match="Sum of input lengths"):
        data.random_split(ours, [3, 3])


class Dictionaries(data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return {"x": np.full(3, i, np.float32), "y": i}


def test_dataloader_collates_a_custom_dataset_of_dicts():
    batches = list(data.DataLoader(Dictionaries(), batch_size=2))
    expected = list(torch_data.DataLoader(Dictionaries(), batch_size=2))
    assert len(batches) == 3
    for ours, theirs in zip(batches, expected):
        assert_same(ours["x"], theirs["x"])
        assert_same(ours["y"], theirs["y"])


def small_convnet(module):
    return module.Sequential(
        module.Conv2d(3, 4, 3, padding=1),
        module.ReLU(),
        module.MaxPool2d(2),
        module.Flatten(),
        module.Linear(4 * 4 * 4, 3),
    )


def test_cifar_style_training_loop_follows_torchs_loss_curve():
    """The tutorial loop after changing only the imports; torch replays lazygrad's shuffled batch order."""
    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((24, 3, 8, 8)).astype(np.float32), rng.integers(0, 3, 24)
    torch.manual_seed(0)
    reference = small_convnet(torch.nn)
    model = small_convnet(nn)
    model.load_state_dict({k: lazygrad.tensor(v.detach().numpy()) for k, v in reference.state_dict().items()})

    # the sample index rides along as a third tensor, so torch can be given the same batches
    dataset = data.TensorDataset(lazygrad.tensor(images), lazygrad.tensor(labels), lazygrad.arange(24))
    loader = data.DataLoader(dataset, batch_size=8, shuffle=True, generator=data.Generator().manual_seed(1))
    criterion, optimizer = nn.CrossEntropyLoss(), lazygrad.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch_criterion = torch.nn.CrossEntropyLoss()
    torch_optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    losses, torch_losses = [], []
    for _epoch in range(2):
        for inputs, targets, index in loader:
            optimizer.zero_grad()
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            rows = torch.tensor(index.numpy())
            torch_optimizer.zero_grad()
            torch_loss = torch_criterion(reference(torch.tensor(images)[rows]), torch.tensor(labels)[rows])
            torch_loss.backward()
            torch_optimizer.step()
            torch_losses.append(torch_loss.item())
    assert len(losses) == 6
    np.testing.assert_allclose(losses, torch_losses, rtol=1e-4, atol=1e-5)
