"""Backend-neutral pytree arithmetic.

A *pytree* here is a nest of ``dict``, ``list``, ``tuple`` (named tuples included) and ``None``
whose other values are array leaves of one backend (``torch.Tensor`` or ``jax.Array``). The
functions below only use the arithmetic operators and ``.sum()`` that both array types share, so
this module imports neither torch nor JAX.

Example:
    >>> import torch
    >>> from bilevel import tree
    >>> a = {"w": torch.ones(2), "b": torch.tensor(3.0)}
    >>> float(tree.vdot(a, tree.scale(2.0, a)))
    22.0
    >>> tree.structure(a) == tree.structure(tree.scale(0.5, a))
    True
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TreeDef",
    "add",
    "axpy",
    "flatten",
    "index",
    "leaves",
    "map",
    "map2",
    "scale",
    "structure",
    "sub",
    "unflatten",
    "vdot",
]

Tree = Any


@dataclass(frozen=True)
class TreeDef:
    """The shape of a pytree without its leaves: node kind, metadata and children."""

    kind: str  # "leaf", "none", "dict", "list", "tuple", "namedtuple"
    meta: Any = None  # (sorted keys, dict type) / namedtuple type
    children: tuple[TreeDef, ...] = ()
    # A dict's own key order: rebuilt dicts keep it (torch.func compares key order), but two
    # dicts with the same keys in another order have the same structure.
    order: tuple[Any, ...] = field(default=(), compare=False)
    # How to rebuild a dict from pairs (a defaultdict keeps its default_factory); not compared.
    rebuild: Any = field(default=None, compare=False)

    @property
    def num_leaves(self) -> int:
        """Number of leaves below this node."""
        if self.kind == "leaf":
            return 1
        return sum(c.num_leaves for c in self.children)

    def __str__(self) -> str:
        if self.kind == "leaf":
            return "*"
        if self.kind == "none":
            return "None"
        if self.kind in ("dict",):
            keys, _ = self.meta
            inner = ", ".join(f"{k!r}: {c}" for k, c in zip(keys, self.children, strict=True))
            return "{" + inner + "}"
        inner = ", ".join(str(c) for c in self.children)
        if self.kind == "list":
            return "[" + inner + "]"
        if self.kind == "namedtuple":
            return f"{self.meta.__name__}({inner})"
        return "(" + inner + ("," if len(self.children) == 1 else "") + ")"


def _dict_factory(node: dict[Any, Any]) -> Callable[[list[tuple[Any, Any]]], dict[Any, Any]]:
    """Rebuilds a dict of ``node``'s type from key-value pairs (a defaultdict keeps its default)."""
    if isinstance(node, defaultdict):
        factory = node.default_factory  # pyright: ignore[reportUnknownMemberType]
        return lambda pairs: defaultdict(factory, pairs)  # pyright: ignore[reportUnknownLambdaType]
    return type(node)


def _flatten(node: Tree, out: list[Any]) -> TreeDef:
    if node is None:
        return TreeDef("none")
    if isinstance(node, dict):
        keys = tuple(sorted(node.keys(), key=repr))  # pyright: ignore[reportUnknownArgumentType]
        children = tuple(_flatten(node[k], out) for k in keys)
        return TreeDef(
            "dict",
            (keys, type(node)),  # pyright: ignore[reportUnknownArgumentType]
            children,
            tuple(node.keys()),  # pyright: ignore[reportUnknownArgumentType]
            _dict_factory(node),  # pyright: ignore[reportUnknownArgumentType]
        )
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        children = tuple(_flatten(c, out) for c in node)  # pyright: ignore[reportUnknownVariableType]
        return TreeDef("namedtuple", type(node), children)  # pyright: ignore[reportUnknownArgumentType]
    if isinstance(node, tuple | list):
        children = tuple(_flatten(c, out) for c in node)  # pyright: ignore[reportUnknownVariableType]
        return TreeDef("list" if isinstance(node, list) else "tuple", None, children)
    out.append(node)
    return TreeDef("leaf")


def flatten(tree: Tree) -> tuple[list[Any], TreeDef]:
    """Split a pytree into its leaves (dict keys sorted) and its structure."""
    out: list[Any] = []
    return out, _flatten(tree, out)


def _unflatten(treedef: TreeDef, it: Any) -> Tree:
    if treedef.kind == "leaf":
        return next(it)
    if treedef.kind == "none":
        return None
    children = [_unflatten(c, it) for c in treedef.children]
    if treedef.kind == "dict":
        keys, _ = treedef.meta
        by_key = dict(zip(keys, children, strict=True))
        return treedef.rebuild([(k, by_key[k]) for k in treedef.order])
    if treedef.kind == "namedtuple":
        return treedef.meta(*children)
    if treedef.kind == "list":
        return children
    return tuple(children)


def unflatten(treedef: TreeDef, leaves_: Sequence[Any]) -> Tree:
    """Rebuild a pytree of structure ``treedef`` from ``leaves_``."""
    if len(leaves_) != treedef.num_leaves:
        raise ValueError(
            f"tree.unflatten: got {len(leaves_)} leaves for a structure with "
            f"{treedef.num_leaves}; pass exactly one leaf per '*' in {treedef}"
        )
    return _unflatten(treedef, iter(leaves_))


def leaves(tree: Tree) -> list[Any]:
    """The leaves of ``tree`` in flattening order."""
    return flatten(tree)[0]


def structure(tree: Tree) -> TreeDef:
    """The structure of ``tree``."""
    return flatten(tree)[1]


def map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    """Apply ``fn`` leafwise to ``tree`` and trees of the same structure in ``rest``.

    Raises:
        ValueError: if a tree in ``rest`` has another structure.
    """
    flat, treedef = flatten(tree)
    others = [flatten(r) for r in rest]
    for i, (_, d) in enumerate(others):
        if d != treedef:
            raise ValueError(
                f"tree.map: argument {i + 1} has structure {d}, expected {treedef}; "
                "pass trees with the same containers and keys"
            )
    return unflatten(treedef, [fn(*xs) for xs in zip(flat, *(o[0] for o in others), strict=True)])


def index(batched: Tree, i: int) -> Tree:
    """Entry ``i`` along the leading axis of every array leaf; other leaves unchanged."""
    return map(lambda x: x[i] if hasattr(x, "shape") else x, batched)


def map2(fn: Callable[[Any, Any], Any], a: Tree, b: Tree) -> Tree:
    """Two-argument :func:`map`, typed for readability."""
    return map(fn, a, b)


def add(a: Tree, b: Tree) -> Tree:
    """Leafwise ``a + b``."""
    return map(lambda x, y: x + y, a, b)


def sub(a: Tree, b: Tree) -> Tree:
    """Leafwise ``a - b``."""
    return map(lambda x, y: x - y, a, b)


def scale(s: Any, a: Tree) -> Tree:
    """Leafwise ``s * a`` for a scalar ``s`` (float or 0-d array)."""
    return map(lambda x: s * x, a)


def axpy(s: Any, x: Tree, y: Tree) -> Tree:
    """Leafwise ``s * x + y``."""
    return map(lambda u, v: s * u + v, x, y)


def vdot(a: Tree, b: Tree) -> Any:
    """Sum over all leaves of ``(a * b).sum()``: the Euclidean inner product of two pytrees.

    Returns a 0-d array of the leaves' backend (or ``0.0`` for a tree without leaves).

    Raises:
        ValueError: if ``a`` and ``b`` have different structures.
    """
    flat_a, def_a = flatten(a)
    flat_b, def_b = flatten(b)
    if def_a != def_b:
        raise ValueError(
            f"tree.vdot: the trees have structures {def_a} and {def_b}; pass trees with the "
            "same containers and keys"
        )
    total: Any = 0.0
    for x, y in zip(flat_a, flat_b, strict=True):
        term = (x * y).sum()
        total = term if isinstance(total, float) else total + term
    return total
