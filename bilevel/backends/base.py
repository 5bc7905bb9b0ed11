"""The automatic-differentiation seam: what the bilevel machinery asks of an AD system.

Everything above ``bilevel/backends/`` reaches torch or JAX only through an object satisfying
:class:`Backend`. The transforms follow ``torch.func`` / JAX conventions: functions of pytrees,
nothing mutated, transforms compose (``grad`` of ``vmap`` of ``grad`` ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Array", "Backend", "Tree"]

Tree = Any
Array = Any


@runtime_checkable
class Backend(Protocol):
    """Differentiation, vectorisation and the few array operations the library needs."""

    name: str

    def owns(self, leaf: object, /) -> bool:
        """Whether ``leaf`` is an array of this backend."""
        ...

    def is_differentiable(self, leaf: Array, /) -> bool:
        """Whether ``leaf`` has a floating (or complex) dtype and can carry a gradient."""
        ...

    def is_complex(self, leaf: Array, /) -> bool:
        """Whether ``leaf`` has a complex dtype."""
        ...

    def value_and_grad(
        self, fn: Callable[..., Any], argnums: int | tuple[int, ...] = 0, has_aux: bool = False
    ) -> Callable[..., tuple[Any, Any]]:
        """``fn``'s value and gradient: returns ``(value, grad)``, or ``((value, aux), grad)``."""
        ...

    def batch_value_and_grad(
        self, fn: Callable[[Tree, Tree], tuple[Any, Any]], in_dims: Tree
    ) -> Callable[[Tree, Tree], tuple[Any, Tree, Any]]:
        """Over a batch of tasks: ``(values, ∇_θ mean(values), aux)`` of ``fn(θ, task) ->
        (value, aux)``, ``task`` mapped over ``in_dims``, θ shared.

        Each backend composes ``grad`` and ``vmap`` in the order that is exact for every
        function it can map: the result equals one gradient per task, averaged.
        """
        ...

    def compiled(self, fn: Callable[..., Any], /) -> Callable[..., Any]:
        """A function equal to the pure function ``fn``, compiled where the backend compiles.

        Keep the returned function and call it again: the compiled form is reused on every call
        with arguments of the same shapes and dtypes. JAX: ``jax.jit``, falling back to calling
        ``fn`` eagerly (from then on) when it cannot be traced (Python control flow on values,
        non-array arguments); torch: ``fn`` itself. It composes with the other transforms.
        """
        ...

    def vjp(
        self, fn: Callable[..., Any], *primals: Tree
    ) -> tuple[Any, Callable[[Any], tuple[Any, ...]]]:
        """``(fn(*primals), vjp_fn)``; ``vjp_fn(cotangent)`` returns one cotangent per primal
        and may be called any number of times."""
        ...

    def jvp(
        self,
        fn: Callable[..., Any],
        primals: tuple[Tree, ...],
        tangents: tuple[Tree, ...],
        has_aux: bool = False,
    ) -> tuple[Any, ...]:
        """``(fn(*primals), J tangents)`` in forward mode, plus ``aux`` last when ``has_aux``."""
        ...

    def vmap(
        self, fn: Callable[..., Any], in_dims: tuple[Any, ...], out_dims: Any = 0
    ) -> Callable[..., Any]:
        """Vectorise ``fn`` over the axes in ``in_dims`` (a pytree prefix; ``None``: shared)."""
        ...

    def map_tasks(
        self, fn: Callable[..., Any], in_dims: tuple[Any, ...], out_dims: Any = 0
    ) -> Callable[..., Any]:
        """:meth:`vmap` over independent tasks: each task draws its own random numbers (dropout,
        ``torch.randn``), as a loop over the tasks would, reproducibly under the framework's
        seed. :meth:`vmap` itself vectorises one computation and keeps one draw for all its
        lanes (the directions of a forward-mode derivative must see the same numbers)."""
        ...

    def stop_gradient(self, tree: Tree, /) -> Tree:
        """The same values with no gradient flowing back through them."""
        ...

    def untape(self, tree: Tree, /) -> Tree:
        """Drop the history of a tape-based autograd (torch's ``requires_grad``) from the leaves.

        Leaves inside a functional transform (``torch.func.grad``, ``jax.grad``) are left alone, so
        ``hypergrad`` still composes with the backend's transforms; only a tape recorded by the
        caller is cut, so results never hold on to the whole unrolled graph.
        """
        ...

    def epsilon(self, leaf: Array, /) -> float:
        """The machine epsilon of ``leaf``'s floating dtype."""
        ...

    def device(self, leaf: Array, /) -> str | None:
        """Where an array lives (``"cpu"``, ``"cuda:0"``, …), or ``None`` where not known (a
        traced or transformed array)."""
        ...

    def is_in_place_error(self, err: BaseException, /) -> bool:
        """Whether ``err`` is the framework refusing an in-place change inside a transform."""
        ...

    def is_traced(self, tree: Tree, /) -> bool:
        """Whether a leaf of ``tree`` is being transformed by the caller (inside ``jax.jit``,
        ``jax.grad``, ``torch.func.grad``, a ``vmap``): its value is not a plain array."""
        ...

    def isolate(self, tree: Tree, /) -> Tree:
        """Copies of the array leaves that share no memory with the caller's (torch: ``clone``,
        differentiable; JAX: the arrays themselves, which are immutable)."""
        ...

    def versions(self, tree: Tree, /) -> tuple[int | None, ...]:
        """Per leaf, a counter that every in-place change of it increments (torch's
        ``_version``), or ``None`` where there is none (JAX arrays, ``torch.func`` wrappers)."""
        ...

    def unalias(self, tree: Tree, /, *inputs: Tree) -> Tree:
        """``tree`` with every leaf that shares memory with a leaf of ``inputs`` copied."""
        ...

    def zeros_like(self, tree: Tree, /) -> Tree:
        """Zeros shaped like ``tree`` (structure, shapes, dtypes, devices), also where it is nan."""
        ...

    def all_finite(self, tree: Tree, /) -> Array:
        """A 0-d boolean array: every entry of every leaf is finite (no host sync)."""
        ...

    def where(self, cond: Array, a: Array, b: Array, /) -> Array:
        """Elementwise ``a if cond else b``."""
        ...

    def scalar(self, value: float, like: Array, /) -> Array:
        """A 0-d array holding ``value`` with the dtype and device of ``like``."""
        ...

    def to_float(self, x: Array, /) -> float:
        """A host ``float`` from a 0-d array (synchronises with the device)."""
        ...

    def host_bool(self, x: Array, /) -> bool | None:
        """``bool(x)`` for a 0-d boolean array, or ``None`` where the value is not known on the
        host yet (inside ``jax.jit``), so a host-side check is skipped instead of failing."""
        ...

    def to_numpy(self, x: Array, /) -> np.ndarray[Any, Any]:
        """A float64 NumPy copy of ``x``, detached from any gradient."""
        ...

    def from_numpy(self, x: np.ndarray[Any, Any], like: Array) -> Array:
        """An array of this backend with ``x``'s values and ``like``'s dtype and device."""
        ...

    def ravel(self, tree: Tree, /) -> tuple[Array, Callable[[Array], Tree]]:
        """Concatenate the leaves into one vector; return it with the inverse map."""
        ...

    def stack(self, xs: Sequence[Array], /) -> Array:
        """Stack arrays of one shape along a new leading axis."""
        ...

    def dense_solve(self, a: Array, b: Array, /) -> Array:
        """Solve the dense square system ``a x = b``."""
        ...

    def eigvalsh(self, a: Array, /) -> Array:
        """Eigenvalues of a symmetric matrix, ascending."""
        ...
