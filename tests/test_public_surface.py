"""Every public name of lazygrad, Tensor, nn, nn.functional and optim has a conformance check: an OpInfo of
PyTorch's op database that tests/test_opinfo.py runs, or a named test (NAMED_CHECKS), or is an alias of a
checked name. A new public name without one fails here, so an untested op cannot ship again.
"""

from __future__ import annotations

import ast
import functools
import pathlib
import types

import pytest
from opinfo_harness import OP_DB, lazygrad_callable
from public_surface_checks import NAMED_CHECKS, NOT_TORCH_API, TRANSFORMER_WORK_NAMES

import lazygrad
import lazygrad.nn.functional as F
from lazygrad import nn, optim

TESTS = pathlib.Path(__file__).parent
# Tensor's operators, and the op_db entry that checks each
OPERATORS = {
    "__add__": "add", "__sub__": "sub", "__mul__": "mul", "__truediv__": "div", "__matmul__": "matmul",
    "__pow__": "pow", "__neg__": "neg", "__eq__": "eq", "__lt__": "lt", "__getitem__": "__getitem__",
}  # fmt: skip


def public_names() -> list[str]:
    def names(prefix, namespace, listed=None):
        out = []
        for name in listed if listed is not None else dir(namespace):
            value = getattr(namespace, name)
            if name.startswith("_") or isinstance(value, types.ModuleType) or name == "annotations":
                continue
            out.append(f"{prefix}.{name}")
        return out

    # nn.functional's own functions, and those it takes from lazygrad.nn's modules (resample's interpolate...)
    functional = [
        n
        for n in dir(F)
        if callable(getattr(F, n)) and getattr(getattr(F, n), "__module__", "").startswith("lazygrad.nn.")
    ]
    return (
        names("lazygrad", lazygrad)
        + names("Tensor", lazygrad.Tensor)
        + [f"Tensor.{op}" for op in OPERATORS]
        + names("nn", nn, nn.__all__)
        + names("nn.functional", F, functional)
        + names("optim", optim, optim.__all__)
    )


def resolve(qualified: str):
    prefix, name = qualified.rsplit(".", 1)
    namespace = {"lazygrad": lazygrad, "Tensor": lazygrad.Tensor, "nn": nn, "nn.functional": F, "optim": optim}
    return getattr(namespace[prefix], name)


def checked_by_op_db() -> set[str]:
    provided = {info.name for info in OP_DB if lazygrad_callable(info) is not None}
    out = set()
    for name in provided:
        if name.startswith("nn.functional."):
            short = name.removeprefix("nn.functional.")
            out.add(name)
            out.add(f"Tensor.{short}")  # nn.functional's layer functions call the Tensor method of their name
        elif "." not in name:
            out.update({f"lazygrad.{name}", f"Tensor.{name}"})
    out.update(f"Tensor.{op}" for op, entry in OPERATORS.items() if entry in provided)
    return out


@functools.cache
def functions_in(path: str) -> set[str]:
    tree = ast.parse(source_of(path))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


@functools.cache
def source_of(path: str) -> str:
    return (TESTS / path).read_text()


@pytest.mark.backend_independent
def test_every_public_name_has_a_conformance_check():
    names = public_names()
    by_op_db = checked_by_op_db() & set(names)
    checked_objects = {id(resolve(q)) for q in by_op_db | set(NAMED_CHECKS)}
    unchecked, aliases = [], 0
    for q in names:
        if q in by_op_db or q in NAMED_CHECKS or q in NOT_TORCH_API or q in TRANSFORMER_WORK_NAMES:
            continue
        if id(resolve(q)) in checked_objects:  # an alias (arccos is acos, lazygrad.exp is Tensor.exp)
            aliases += 1
            continue
        unchecked.append(q)
    print(
        f"\n{len(names)} public names: {len(by_op_db)} checked by op_db, {len(NAMED_CHECKS)} by named tests, "
        f"{aliases} aliases of checked names, {len(NOT_TORCH_API)} lazygrad's own API (not torch's), "
        f"{len(TRANSFORMER_WORK_NAMES)} left to the transformer work"
    )
    assert not unchecked, f"public names with no conformance check (add an OpInfo-covered op or a test): {unchecked}"


@pytest.mark.backend_independent
def test_named_checks_exist_and_mention_their_name():
    for qualified, where in NAMED_CHECKS.items():
        path, test = where.split("::")
        assert test in functions_in(path), f"{qualified}: {where} does not exist"
        source = source_of(path)
        assert qualified.rsplit(".", 1)[1] in source, f"{qualified}: {path} never mentions it"
