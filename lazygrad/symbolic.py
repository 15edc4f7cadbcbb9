"""Integer index algebra with simplification.

Kernels index memory with expressions built from loop variables. Views stack reshapes on top of
permutes, pads and expands, which produce `//` and `%` chains; the rules here fold them back into
plain `a*x + b*y + c` wherever the value ranges allow, which is what makes generated kernels fast.

All nodes are immutable and carry their value range [vmin, vmax]. Division and modulo are
floor semantics and are only simplified where the numerator is known non-negative.
"""

from __future__ import annotations

import functools
import math
import operator
import re


class Node:
    vmin: int
    vmax: int

    # --- construction helpers, with simplification -------------------------------------------
    def __add__(self, other):
        return sum_of([self, to_node(other)])

    __radd__ = __add__

    def __sub__(self, other):
        return self + (-to_node(other))

    def __rsub__(self, other):
        return to_node(other) + (-self)

    def __neg__(self):
        return self * -1

    def __mul__(self, other):
        if isinstance(other, Node):
            if isinstance(other, Num):
                return mul(self, other.value)
            if isinstance(self, Num):
                return mul(other, self.value)
            raise TypeError("index expressions are affine: cannot multiply two variables")
        return mul(self, other)

    __rmul__ = __mul__

    def __floordiv__(self, b: int):
        return div(self, b)

    def __mod__(self, b: int):
        return mod(self, b)

    def __lt__(self, b):
        return lt(self, b)

    def __ge__(self, b):
        return 1 - lt(self, b) if isinstance(lt(self, b), Num) else GeNode(self, b)

    def __bool__(self):
        # a comparison of expressions is an expression (lt, ge): its truth is known only in a kernel. Code that
        # tests one (`if size > limit` with a symbolic size) would always take one branch: refused instead
        raise TypeError(f"the truth value of the index expression {self.render()} is known only in a kernel")

    # identity: structural equality, so that like terms can be combined
    def key(self) -> tuple:
        raise NotImplementedError

    def __eq__(self, other):
        return isinstance(other, Node) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def __repr__(self):
        return self.render()

    def render(self) -> str:
        raise NotImplementedError

    def variables(self) -> set:
        out = set()
        for c in self.children():
            out |= c.variables()
        return out

    def children(self) -> tuple:
        return ()

    def substitute(self, values: dict) -> Node:
        """Replace variables (by name) with nodes or ints."""
        raise NotImplementedError


class Num(Node):
    def __init__(self, value: int):
        self.value = int(value)
        self.vmin = self.vmax = self.value

    def __bool__(self):
        return self.value != 0

    def key(self):
        return ("num", self.value)

    def render(self):
        return str(self.value)

    def substitute(self, values):
        return self


class Var(Node):
    def __init__(self, name: str, vmin: int, vmax: int):
        self.name, self.vmin, self.vmax = name, int(vmin), int(vmax)

    def key(self):
        return ("var", self.name, self.vmin, self.vmax)

    def render(self):
        return self.name

    def variables(self):
        return {self}

    def substitute(self, values):
        return to_node(values[self.name]) if self.name in values else self


class MulNode(Node):
    """a * constant (constant never 0 or 1 once simplified)."""

    def __init__(self, a: Node, b: int):
        self.a, self.b = a, b
        lo, hi = a.vmin * b, a.vmax * b
        self.vmin, self.vmax = min(lo, hi), max(lo, hi)

    def key(self):
        return ("mul", self.a.key(), self.b)

    def render(self):
        return f"({self.a.render()}*{self.b})"

    def children(self):
        return (self.a,)

    def substitute(self, values):
        return self.a.substitute(values) * self.b


class DivNode(Node):
    def __init__(self, a: Node, b: int):
        self.a, self.b = a, b
        self.vmin, self.vmax = a.vmin // b, a.vmax // b

    def key(self):
        return ("div", self.a.key(), self.b)

    def render(self):
        return f"({self.a.render()}//{self.b})"

    def children(self):
        return (self.a,)

    def substitute(self, values):
        return self.a.substitute(values) // self.b


class ModNode(Node):
    def __init__(self, a: Node, b: int):
        self.a, self.b = a, b
        self.vmin, self.vmax = (0, b - 1) if a.vmin >= 0 else (min(0, a.vmin), b - 1)

    def key(self):
        return ("mod", self.a.key(), self.b)

    def render(self):
        return f"({self.a.render()}%{self.b})"

    def children(self):
        return (self.a,)

    def substitute(self, values):
        return self.a.substitute(values) % self.b


class SumNode(Node):
    def __init__(self, terms: tuple):
        self.terms = terms
        self.vmin, self.vmax = sum(t.vmin for t in terms), sum(t.vmax for t in terms)

    def key(self):
        return ("sum", tuple(t.key() for t in self.terms))

    def render(self):
        return "(" + "+".join(t.render() for t in self.terms) + ")"

    def children(self):
        return self.terms

    def substitute(self, values):
        return sum_of([t.substitute(values) for t in self.terms])


class LtNode(Node):
    """a < b as 0/1."""

    def __init__(self, a: Node, b: int):
        self.a, self.b = a, b
        self.vmin, self.vmax = 0, 1

    def key(self):
        return ("lt", self.a.key(), self.b)

    def render(self):
        return f"({self.a.render()}<{self.b})"

    def children(self):
        return (self.a,)

    def substitute(self, values):
        return lt(self.a.substitute(values), self.b)


class GeNode(Node):
    """a >= b as 0/1 (kept apart from 1-(a<b) so that it renders as one comparison)."""

    def __init__(self, a: Node, b: int):
        self.a, self.b = a, b
        self.vmin, self.vmax = 0, 1

    def key(self):
        return ("ge", self.a.key(), self.b)

    def render(self):
        return f"({self.a.render()}>={self.b})"

    def children(self):
        return (self.a,)

    def substitute(self, values):
        a = self.a.substitute(values)
        if a.vmin >= self.b:
            return Num(1)
        if a.vmax < self.b:
            return Num(0)
        return GeNode(a, self.b)


class AndNode(Node):
    def __init__(self, terms: tuple):
        self.terms = terms
        self.vmin, self.vmax = min(t.vmin for t in terms), max(t.vmax for t in terms)

    def key(self):
        return ("and", tuple(t.key() for t in self.terms))

    def render(self):
        return "(" + "&&".join(t.render() for t in self.terms) + ")"

    def children(self):
        return self.terms

    def substitute(self, values):
        return all_of([t.substitute(values) for t in self.terms])


# --- simplifying constructors ------------------------------------------------------------------
def to_node(x) -> Node:
    return x if isinstance(x, Node) else Num(x)


def mul(a: Node, b: int) -> Node:
    if b == 0:
        return Num(0)
    if b == 1:
        return a
    if isinstance(a, Num):
        return Num(a.value * b)
    if isinstance(a, MulNode):
        return mul(a.a, a.b * b)
    if isinstance(a, SumNode):
        return sum_of([mul(t, b) for t in a.terms])
    return MulNode(a, b)


def _split_below(a: SumNode, b: int):
    """(x, r, c) with a = c*x + r, c a divisor of b (above 1), x >= 0 and 0 <= r < c, trying the largest
    coefficients first; None if no coefficient splits a that way."""
    coefs = sorted({_coefficient(t)[1] for t in a.terms if not isinstance(t, Num)}, reverse=True)
    for c in coefs:
        if c <= 1 or b % c or c == b:
            continue
        big = [t for t in a.terms if (t.value if isinstance(t, Num) else _coefficient(t)[1]) % c == 0]
        small = sum_of([t for t in a.terms if not any(t is u for u in big)])
        if small.vmin >= 0 and small.vmax < c:
            x = sum_of(
                [
                    Num(t.value // c) if isinstance(t, Num) else mul(_coefficient(t)[0], _coefficient(t)[1] // c)
                    for t in big
                ]
            )
            if x.vmin >= 0:
                return x, small, c
    return None


def _coefficient(term: Node) -> tuple[Node, int]:
    return (term.a, term.b) if isinstance(term, MulNode) else (term, 1)


def sum_of(nodes: list) -> Node:
    const, coeffs = 0, {}
    flat = []
    for n in nodes:
        n = to_node(n)
        flat.extend(n.terms if isinstance(n, SumNode) else [n])
    for n in flat:
        if isinstance(n, Num):
            const += n.value
            continue
        base, c = _coefficient(n)
        coeffs[base] = coeffs.get(base, 0) + c
    terms = [mul(base, c) for base, c in coeffs.items() if c != 0]
    folded = _fold_div_mod_pair(terms)
    if folded is not None:
        return sum_of(folded + [Num(const)])
    if const != 0:
        terms.append(Num(const))
    if not terms:
        return Num(0)
    return terms[0] if len(terms) == 1 else SumNode(tuple(terms))


def _fold_div_mod_pair(terms: list) -> list | None:
    """(x//b)*b + x%b -> x, what a reshape followed by its inverse leaves behind: the terms with one such
    pair folded, or None when there is none."""
    for i, t in enumerate(terms):
        base, c = _coefficient(t)
        if not isinstance(base, ModNode) or base.a.vmin < 0:
            continue
        for j, u in enumerate(terms):
            ubase, uc = _coefficient(u)
            if isinstance(ubase, DivNode) and ubase.a == base.a and ubase.b == base.b and uc == c * base.b:
                return [x for k, x in enumerate(terms) if k not in (i, j)] + [mul(base.a, c)]
    return None


def div(a: Node, b: int) -> Node:
    assert b > 0, f"division of an index by {b}"
    if b == 1:
        return a
    if isinstance(a, Num):
        return Num(a.value // b)
    if a.vmin >= 0 and a.vmax < b:
        return Num(0)
    if a.vmin >= 0 and a.vmin // b == a.vmax // b:
        return Num(a.vmin // b)
    if isinstance(a, MulNode) and a.b % b == 0:
        return mul(a.a, a.b // b)
    if isinstance(a, DivNode) and a.vmin >= 0:
        return div(a.a, a.b * b)
    if isinstance(a, SumNode) and a.vmin >= 0:
        # split off terms that divide exactly; what remains may be small enough to vanish
        exact, rest, progress = [], [], False
        for t in a.terms:
            base, c = _coefficient(t)
            if isinstance(t, Num):
                exact.append(Num(t.value // b))
                rest.append(Num(t.value % b))
                progress |= t.value // b != 0
            elif c % b == 0:
                exact.append(mul(base, c // b))
                progress = True
            else:
                rest.append(t)
        if progress and all(t.vmin >= 0 for t in rest):
            rest_node = sum_of(rest)
            return sum_of(exact + [div(rest_node, b)])
        split = _split_below(a, b)
        if split is not None:  # (c*x + r) // (c*n) = x // n when 0 <= r < c: r never carries
            big, _, c = split
            return div(big, b // c)
        # common factor of all coefficients: (g*x + g*y) // (g*k) -> (x + y) // k
        g = functools.reduce(math.gcd, [_coefficient(t)[1] if not isinstance(t, Num) else t.value for t in a.terms])
        g = math.gcd(g, b)
        if g > 1:
            return div(
                sum_of(
                    [
                        mul(_coefficient(t)[0], _coefficient(t)[1] // g)
                        if not isinstance(t, Num)
                        else Num(t.value // g)
                        for t in a.terms
                    ]
                ),
                b // g,
            )
    return DivNode(a, b)


def mod(a: Node, b: int) -> Node:
    assert b > 0, f"modulo of an index by {b}"
    if b == 1:
        return Num(0)
    if isinstance(a, Num):
        return Num(a.value % b)
    if a.vmin >= 0 and a.vmax < b:
        return a
    if a.vmin >= 0 and a.vmin // b == a.vmax // b:
        return a - (a.vmin // b) * b
    if isinstance(a, MulNode):
        if a.b % b == 0:
            return Num(0)
        if a.a.vmin >= 0 and a.b % b != a.b and a.b > 0:
            return mod(mul(a.a, a.b % b), b)
    if isinstance(a, ModNode) and a.b % b == 0 and a.a.vmin >= 0:
        return mod(a.a, b)
    if isinstance(a, SumNode) and a.vmin >= 0:
        kept = []
        for t in a.terms:
            base, c = _coefficient(t)
            if isinstance(t, Num):
                if t.value % b:
                    kept.append(Num(t.value % b))
            elif c % b:
                # a coefficient only matters modulo b, for non-negative bases
                kept.append(mul(base, c % b) if base.vmin >= 0 and c > 0 else t)
        new = sum_of(kept)
        if new.key() != a.key() and new.vmin >= 0:
            return mod(new, b)
        split = _split_below(a, b)
        if split is not None:  # (c*x + r) % (c*n) = c*(x % n) + r when 0 <= r < c
            big, small, c = split
            return mul(mod(big, b // c), c) + small
        # common factor: (g*x) % (g*k) = g*(x % k)
        coefs = [_coefficient(t)[1] if not isinstance(t, Num) else t.value for t in a.terms]
        g = math.gcd(functools.reduce(math.gcd, coefs), b)
        if g > 1:
            inner = sum_of(
                [
                    mul(_coefficient(t)[0], _coefficient(t)[1] // g) if not isinstance(t, Num) else Num(t.value // g)
                    for t in a.terms
                ]
            )
            return mul(mod(inner, b // g), g)
    return ModNode(a, b)


def lt(a: Node, b) -> Node:
    if isinstance(b, Node):
        if not isinstance(b, Num):
            return lt(a - b, 0)
        b = b.value
    if a.vmax < b:
        return Num(1)
    if a.vmin >= b:
        return Num(0)
    # x*c < b with c > 0  ->  x < ceil(b/c)
    if isinstance(a, MulNode) and a.b > 0:
        return lt(a.a, -(-b // a.b))
    return LtNode(a, b)


def ge(a: Node, b: int) -> Node:
    if a.vmin >= b:
        return Num(1)
    if a.vmax < b:
        return Num(0)
    return GeNode(a, b)


def all_of(nodes: list) -> Node:
    terms = []
    for n in nodes:
        n = to_node(n)
        if isinstance(n, Num):
            if n.value == 0:
                return Num(0)
            continue
        for t in n.terms if isinstance(n, AndNode) else (n,):
            if t not in terms:
                terms.append(t)
    if not terms:
        return Num(1)
    return terms[0] if len(terms) == 1 else AndNode(tuple(terms))


# --- variables of the user's API: run-time sizes ------------------------------------------------
# The loop variables of a kernel (d0, g0, r0, lane, ...) are Vars too; a user's Variable may not take their names.
_LOOP_NAME = re.compile(r"^(?:[dgr]\d+|g0i|kc|lane|lid|tile)$")
# whether a Variable was ever made: until then no view can be symbolic, and the frontend's hot paths (slicing,
# reshapes, in-place updates) skip their checks for one
VARIABLES_MADE = [False]


class Variable(Var):
    """A bounded integer known only at run time: `lazygrad.Variable("pos", 0, 127)`. As a slice start or stop it
    makes views whose offset or size is symbolic (`cache[:, :, pos:pos + 1]`, `cache[:, :, :pos + 1]`); kernels take
    its value as an int argument, so one compiled kernel serves every value. `bind(n)` gives the same variable with
    a value for one graph; kernels, their cache and the JIT know it by (name, bounds) only."""

    def __init__(self, name: str, vmin: int, vmax: int):
        if not isinstance(name, str) or not name.isidentifier() or _LOOP_NAME.match(name):
            raise ValueError(f"Variable name {name!r}: an identifier, not one of the kernels' loop names (d0, r0, ...)")
        if int(vmin) < 0 or int(vmax) < int(vmin):
            raise ValueError(f"Variable {name!r}: bounds [{vmin}, {vmax}] must satisfy 0 <= min <= max")
        super().__init__(name, vmin, vmax)
        VARIABLES_MADE[0] = True

    def bind(self, value: int) -> BoundVariable:
        """This variable with a value (checked against its bounds)."""
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TypeError(f"Variable {self.name!r} binds an int, not {type(value).__name__}")
        value = operator.index(value)
        if not self.vmin <= value <= self.vmax:
            raise ValueError(
                f"Variable {self.name!r} bound to {int(value)}, outside its bounds [{self.vmin}, {self.vmax}]"
            )
        return BoundVariable(self.name, self.vmin, self.vmax, int(value))

    def __repr__(self):
        return f"Variable({self.name!r}, {self.vmin}, {self.vmax})"


class BoundVariable(Variable):
    """A Variable with a value. In the graph, two bindings of one variable to different values are different nodes
    (so graphs built for different values are never mistaken for each other); a kernel sees the unbound variable."""

    def __init__(self, name: str, vmin: int, vmax: int, value: int):
        super().__init__(name, vmin, vmax)
        self.value = value

    def key(self):
        return ("bound", self.name, self.vmin, self.vmax, self.value)

    def bind(self, value: int) -> BoundVariable:
        return self.unbound.bind(value)

    @property
    def unbound(self) -> Variable:
        return Variable(self.name, self.vmin, self.vmax)

    def unbind(self) -> tuple:
        """(the unbound Variable, the value)."""
        return self.unbound, self.value

    def __repr__(self):  # (short: it is what a shape shows for a dim of this size)
        return f"{self.name}={self.value}"


def is_symbolic(x) -> bool:
    """Whether a size, offset or index is an expression of variables rather than an int."""
    return isinstance(x, Node) and not isinstance(x, Num)


def upper_bound(x) -> int:
    """The largest value a size can take: itself for an int, the bound for an expression."""
    return x.vmax if isinstance(x, Node) else x


def user_variables(x) -> set:
    """The user's Variables (bound or not) inside a node."""
    return {v for v in x.variables() if isinstance(v, Variable)} if isinstance(x, Node) else set()


def unbind_node(x):
    """(x with every BoundVariable replaced by its unbound Variable, {name: value} of those bindings)."""
    if not isinstance(x, Node):
        return x, {}
    bound = {v for v in x.variables() if isinstance(v, BoundVariable)}
    if not bound:
        return x, {}
    return x.substitute({v.name: v.unbound for v in bound}), {v.name: v.value for v in bound}
