"""The JAX backend, built on ``jax.value_and_grad``, ``jax.vjp``, ``jax.jvp`` and ``jax.vmap``.

Chosen automatically when the meta-parameters and tasks hold ``jax.Array`` leaves. It has the
semantics of :class:`~bilevel.backends.torch.TorchBackend`, with these JAX-specific points:

- **float64.** JAX creates float32 arrays unless the global flag ``jax_enable_x64`` is on. This
  module never changes that flag: importing it or choosing it leaves JAX's configuration as the
  caller set it. For float64 (e.g. :func:`bilevel.testing.check_hypergrad`), enable it yourself
  before creating arrays: ``jax.config.update("jax_enable_x64", True)`` or, for a block,
  ``with jax.enable_x64(True): ...``. Every array the backend creates takes the dtype of an
  existing array (``scalar``, ``from_numpy``), so float32 problems stay float32 either way.
- **No tape.** JAX records no history on arrays, so :meth:`JaxBackend.untape` is the identity.
- **Non-array leaves.** The pytrees are :mod:`bilevel.tree`'s (dict, list, tuple, named tuple,
  ``None``). :meth:`JaxBackend.vmap` closes over leaves that are not arrays (ints, strings in a
  task), as ``torch.func.vmap`` passes them through, where ``jax.vmap`` would reject them.
- **ravel** casts each piece back to its leaf's dtype when unravelling (``jax.vjp`` and
  ``jax.jvp`` require cotangents and tangents of exactly the primal dtype).
- **Compilation is the caller's.** :meth:`JaxBackend.compiled` wraps ``jax.jit`` (running
  eagerly from then on if it cannot trace); bilevel calls it only where documented (``fit``'s
  step, ``testing.compiled_inner_loss`` used by ``check_hypergrad``). ``hypergrad`` never
  compiles by itself, and ``jax.jit`` around a function that calls it works for every strategy
  but ``Implicit``.
- **Host synchronisation.** ``to_float`` and ``to_numpy`` need concrete values: they raise
  JAX's ``ConcretizationTypeError`` inside ``jax.jit``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as err:  # pragma: no cover - exercised only without JAX installed
    raise ImportError(
        "the JAX backend of bilevel needs JAX: pip install 'bilevel[jax]' (or pip install jax)"
    ) from err

from bilevel import tree

__all__ = ["JaxBackend"]

Tree = Any


def _is_array(x: object) -> bool:
    return isinstance(x, jax.Array)


class _Axis:
    """One leaf's entry of ``in_dims`` (an int or ``None``), kept a leaf by :mod:`bilevel.tree`,
    which would read a bare ``None`` as an empty subtree."""

    __slots__ = ("dim",)

    def __init__(self, dim: int | None) -> None:
        self.dim = dim


def _leaf_dims(dims: Any, arg: Tree) -> list[int | None]:
    """``dims`` (an int, ``None`` or a tree prefix of ``arg``), one entry per leaf of ``arg``."""
    return [a.dim for a in tree.leaves(_expand_dims(dims, arg))]


def _expand_dims(dims: Any, arg: Tree) -> Tree:
    if dims is None or isinstance(dims, int):
        return tree.map(lambda _: _Axis(dims), arg)
    if isinstance(dims, dict) and isinstance(arg, dict):
        if set(dims.keys()) != set(arg.keys()):  # pyright: ignore[reportUnknownArgumentType]
            raise ValueError(
                f"vmap: in_dims has keys {sorted(dims, key=repr)} where the argument has "
                f"{sorted(arg, key=repr)}"  # pyright: ignore[reportUnknownArgumentType]
            )
        return type(arg)((k, _expand_dims(dims[k], arg[k])) for k in arg)  # pyright: ignore
    if isinstance(dims, tuple | list) and isinstance(arg, tuple | list):
        if len(dims) != len(arg):  # pyright: ignore[reportUnknownArgumentType]
            raise ValueError(
                f"vmap: in_dims has {len(dims)} entries where the argument has {len(arg)}"  # pyright: ignore[reportUnknownArgumentType]
            )
        parts = [_expand_dims(d, a) for d, a in zip(dims, arg, strict=True)]  # pyright: ignore
        if hasattr(arg, "_fields"):
            return type(arg)(*parts)
        return type(arg)(parts)  # pyright: ignore[reportUnknownArgumentType]
    raise ValueError(
        f"vmap: in_dims entry {dims!r} does not match an argument of structure "
        f"{tree.structure(arg)}; give an int, None, or a tree of them shaped like the argument"
    )


class JaxBackend:
    """:class:`~bilevel.backends.Backend` on JAX's function transforms.

    Example:
        >>> import jax.numpy as jnp
        >>> from bilevel.backends.jax import JaxBackend
        >>> b = JaxBackend()
        >>> value, g = b.value_and_grad(lambda x: (x**2).sum())(jnp.array([1.0, 2.0]))
        >>> float(value), g.tolist()
        (5.0, [2.0, 4.0])
    """

    name = "jax"

    def __repr__(self) -> str:
        return "JaxBackend()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JaxBackend)

    def __hash__(self) -> int:
        return hash("JaxBackend")

    def owns(self, leaf: object) -> bool:
        return _is_array(leaf)

    def is_differentiable(self, leaf: Any) -> bool:
        return bool(jnp.issubdtype(leaf.dtype, jnp.inexact))

    def is_complex(self, leaf: Any) -> bool:
        return bool(jnp.issubdtype(leaf.dtype, jnp.complexfloating))

    def value_and_grad(
        self, fn: Callable[..., Any], argnums: int | tuple[int, ...] = 0, has_aux: bool = False
    ) -> Callable[..., tuple[Any, Any]]:
        return jax.value_and_grad(fn, argnums=argnums, has_aux=has_aux)

    def batch_value_and_grad(
        self, fn: Callable[[Tree, Tree], tuple[Any, Any]], in_dims: Tree
    ) -> Callable[[Tree, Tree], tuple[Any, Tree, Any]]:
        # The gradient of the vmapped mean: JAX transforms the traced program as a whole, so
        # the order is exact, and the backward pass accumulates one θ-sized gradient.
        mapped = self.vmap(fn, in_dims=(None, in_dims))

        def run(meta: Tree, tasks: Tree) -> tuple[Any, Tree, Any]:
            def mean(m: Tree) -> tuple[Any, tuple[Any, Any]]:
                values, aux = mapped(m, tasks)
                return values.mean(0), (values, aux)

            (_, (values, aux)), grad = jax.value_and_grad(mean, has_aux=True)(meta)
            return values, grad, aux

        return run

    def compiled(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        jitted = jax.jit(fn)
        traceable = True

        def call(*args: Any) -> Any:
            nonlocal traceable
            if traceable:
                try:
                    return jitted(*args)
                except TypeError:  # JAX's tracer errors are TypeErrors; so are non-array args
                    traceable = False  # fn itself raises again below if the error is fn's own
            return fn(*args)

        return call

    def vjp(
        self, fn: Callable[..., Any], *primals: Tree
    ) -> tuple[Any, Callable[[Any], tuple[Any, ...]]]:
        out, vjp_fn = jax.vjp(fn, *primals)

        def pullback(cotangent: Any) -> tuple[Any, ...]:
            return tuple(vjp_fn(cotangent))

        return out, pullback

    def jvp(
        self,
        fn: Callable[..., Any],
        primals: tuple[Tree, ...],
        tangents: tuple[Tree, ...],
        has_aux: bool = False,
    ) -> tuple[Any, ...]:
        return tuple(jax.jvp(fn, tuple(primals), tuple(tangents), has_aux=has_aux))

    def vmap(
        self, fn: Callable[..., Any], in_dims: tuple[Any, ...], out_dims: Any = 0
    ) -> Callable[..., Any]:
        def mapped(*args: Any) -> Any:
            if len(in_dims) != len(args):
                raise ValueError(
                    f"vmap: in_dims has {len(in_dims)} entries for {len(args)} arguments"
                )
            flat, treedef = tree.flatten(tuple(args))
            dims = [x for d, a in zip(in_dims, args, strict=True) for x in _leaf_dims(d, a)]
            mapped_at = [i for i, x in enumerate(flat) if _is_array(x) or dims[i] is not None]
            for i, x in enumerate(flat):
                if dims[i] is not None and not _is_array(x):
                    raise ValueError(
                        f"vmap: leaf {i} is a {type(x).__name__}, not a jax.Array, but in_dims "
                        f"maps it over axis {dims[i]}"
                    )

            def inner(*arrays: Any) -> Any:
                leaves = list(flat)
                for i, a in zip(mapped_at, arrays, strict=True):
                    leaves[i] = a
                return fn(*tree.unflatten(treedef, leaves))

            return jax.vmap(inner, in_axes=tuple(dims[i] for i in mapped_at), out_axes=out_dims)(
                *(flat[i] for i in mapped_at)
            )

        return mapped

    def map_tasks(
        self, fn: Callable[..., Any], in_dims: tuple[Any, ...], out_dims: Any = 0
    ) -> Callable[..., Any]:
        # JAX draws random numbers from explicit keys: per-task keys in the tasks make the
        # draws independent, so mapping tasks is vmap itself.
        return self.vmap(fn, in_dims, out_dims)

    def stop_gradient(self, tree_: Tree) -> Tree:
        return tree.map(lambda x: jax.lax.stop_gradient(x) if _is_array(x) else x, tree_)

    def untape(self, tree_: Tree) -> Tree:
        return tree_  # JAX keeps no history on arrays: nothing to cut

    def epsilon(self, leaf: Any) -> float:
        return float(jnp.finfo(leaf.dtype).eps)

    def device(self, leaf: Any) -> str | None:
        try:
            devices = leaf.devices()
        except (AttributeError, jax.errors.ConcretizationTypeError):  # a tracer
            return None
        return ",".join(sorted(str(d) for d in devices))

    def is_in_place_error(self, err: BaseException) -> bool:
        return False  # JAX arrays cannot be changed in place

    def is_traced(self, tree_: Tree) -> bool:
        from jax.core import Tracer  # the public home of JAX's tracer type

        return any(isinstance(x, Tracer) for x in tree.leaves(tree_))

    def isolate(self, tree_: Tree) -> Tree:
        return tree_  # JAX arrays are immutable: sharing them is safe

    def versions(self, tree_: Tree) -> tuple[int | None, ...]:
        return tuple(None for _ in tree.leaves(tree_))  # nothing can change in place

    def unalias(self, tree_: Tree, *inputs: Tree) -> Tree:
        return tree_  # immutable: a shared array cannot be changed through the result

    def zeros_like(self, tree_: Tree) -> Tree:
        return tree.map(jnp.zeros_like, tree_)

    def all_finite(self, tree_: Tree) -> Any:
        flags = [jnp.all(jnp.isfinite(x)) for x in tree.leaves(tree_)]
        if not flags:
            return jnp.asarray(True)
        return jnp.all(jnp.stack(flags))

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return jnp.where(cond, a, b)

    def scalar(self, value: float, like: Any) -> Any:
        return jnp.asarray(value, dtype=like.dtype)

    def to_float(self, x: Any) -> float:
        return float(x)

    def host_bool(self, x: Any) -> bool | None:
        """``bool(x)`` for a 0-d boolean array, or ``None`` inside ``jax.jit`` where the value is
        not known yet (so a host-side check can be skipped instead of failing the trace)."""
        try:
            return bool(x)
        except jax.errors.ConcretizationTypeError:
            return None

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        return np.array(jax.device_get(x), dtype=np.float64)  # a writable copy, as torch gives

    def from_numpy(self, x: np.ndarray[Any, Any], like: Any) -> Any:
        return jnp.asarray(np.asarray(x), dtype=like.dtype)

    def ravel(self, tree_: Tree) -> tuple[Any, Callable[[Any], Tree]]:
        flat, treedef = tree.flatten(tree_)
        shapes = [tuple(x.shape) for x in flat]
        dtypes = [x.dtype for x in flat]
        stops = np.cumsum([int(np.prod(s)) for s in shapes]).tolist()
        vec = jnp.concatenate([jnp.ravel(x) for x in flat]) if flat else jnp.zeros(0)

        def unravel(v: Any) -> Tree:
            starts = [0, *stops][: len(stops)]
            parts = [
                v[a:b].reshape(s).astype(d)
                for a, b, s, d in zip(starts, stops, shapes, dtypes, strict=True)
            ]
            return tree.unflatten(treedef, parts)

        return vec, unravel

    def stack(self, xs: Sequence[Any]) -> Any:
        return jnp.stack(list(xs))

    def dense_solve(self, a: Any, b: Any) -> Any:
        x = jnp.linalg.solve(a, b)
        # torch raises on a singular matrix; JAX returns inf/nan. Match torch where the values
        # are concrete (outside jit), so callers can catch RuntimeError either way.
        try:
            singular = not bool(jnp.all(jnp.isfinite(x))) and bool(
                jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(b))
            )
        except jax.errors.ConcretizationTypeError:  # traced: no host check possible
            return x
        if singular:
            raise RuntimeError("dense_solve: the matrix is singular to working precision")
        return x

    def eigvalsh(self, a: Any) -> Any:
        return jnp.linalg.eigvalsh(a)
