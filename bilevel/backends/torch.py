"""The PyTorch backend, built on ``torch.func``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

try:
    import torch
    from torch import func as tf
    from torch._C._functorch import is_functorch_wrapped_tensor
except ImportError as err:  # pragma: no cover - exercised only without torch installed
    raise ImportError(
        "the PyTorch backend of bilevel needs torch: pip install 'bilevel[torch]' "
        "(or pip install torch)"
    ) from err

from bilevel import tree

__all__ = ["TorchBackend"]

Tree = Any


class TorchBackend:
    """:class:`~bilevel.backends.Backend` on ``torch.func`` (``grad_and_value``, ``vjp``, ...).

    Example:
        >>> import torch
        >>> from bilevel.backends import TorchBackend
        >>> b = TorchBackend()
        >>> value, g = b.value_and_grad(lambda x: (x**2).sum())(torch.tensor([1.0, 2.0]))
        >>> float(value), g.tolist()
        (5.0, [2.0, 4.0])
    """

    name = "torch"

    def __repr__(self) -> str:
        return "TorchBackend()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TorchBackend)

    def __hash__(self) -> int:
        return hash("TorchBackend")

    def owns(self, leaf: object) -> bool:
        return isinstance(leaf, torch.Tensor)

    def is_differentiable(self, leaf: Any) -> bool:
        return bool(leaf.dtype.is_floating_point or leaf.dtype.is_complex)

    def is_complex(self, leaf: Any) -> bool:
        return bool(leaf.dtype.is_complex)

    def value_and_grad(
        self, fn: Callable[..., Any], argnums: int | tuple[int, ...] = 0, has_aux: bool = False
    ) -> Callable[..., tuple[Any, Any]]:
        def wrapped(*args: Any) -> tuple[Any, Any]:
            # The differentiated arguments go in as flat lists of their array leaves, so that
            # None is an empty subtree as on JAX (torch.func's own pytrees refuse None).
            nums = argnums if isinstance(argnums, tuple) else (argnums,)
            flat = [tree.flatten(args[i]) for i in nums]

            def of_leaves(*leaf_lists: Any) -> Any:
                full = list(args)
                for i, leaves_, (_, treedef) in zip(nums, leaf_lists, flat, strict=True):
                    full[i] = tree.unflatten(treedef, leaves_)
                return fn(*full)

            g, v = tf.grad_and_value(of_leaves, argnums=tuple(range(len(nums))), has_aux=has_aux)(
                *(leaves_ for leaves_, _ in flat)
            )
            grads = tuple(tree.unflatten(td, gl) for gl, (_, td) in zip(g, flat, strict=True))
            return v, grads if isinstance(argnums, tuple) else grads[0]

        return wrapped

    def batch_value_and_grad(
        self, fn: Callable[[Tree, Tree], tuple[Any, Any]], in_dims: Tree
    ) -> Callable[[Tree, Tree], tuple[Any, Tree, Any]]:
        # vmap of per-task gradients, then the mean. Not the gradient of the vmapped mean:
        # torch.func's reverse mode through a vmapped F.batch_norm whose input carries a nested
        # gradient (an unrolled inner step) is wrong (0.56 relative error on a conv+BN net,
        # tests/test_batch_semantics.py), while vmap(grad) is one exact gradient per task.
        per_task = tf.vmap(
            self.value_and_grad(fn, has_aux=True), in_dims=(None, in_dims), randomness="different"
        )

        def run(meta: Tree, tasks: Tree) -> tuple[Any, Tree, Any]:
            (values, aux), grads = per_task(meta, tasks)
            return values, tree.map(lambda g: g.mean(0), grads), aux

        return run

    def compiled(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn

    def vjp(
        self, fn: Callable[..., Any], *primals: Tree
    ) -> tuple[Any, Callable[[Any], tuple[Any, ...]]]:
        flat = [tree.flatten(p) for p in primals]

        def of_leaves(*leaf_lists: Any) -> Any:
            return fn(
                *(tree.unflatten(td, ls) for ls, (_, td) in zip(leaf_lists, flat, strict=True))
            )

        out, vjp_fn = cast(
            "tuple[Any, Callable[[Any], tuple[Any, ...]]]",
            tf.vjp(of_leaves, *(ls for ls, _ in flat)),
        )

        def pullback(cotangent: Any) -> tuple[Any, ...]:
            parts = vjp_fn(cotangent)
            return tuple(tree.unflatten(td, ls) for ls, (_, td) in zip(parts, flat, strict=True))

        return out, pullback

    def jvp(
        self,
        fn: Callable[..., Any],
        primals: tuple[Tree, ...],
        tangents: tuple[Tree, ...],
        has_aux: bool = False,
    ) -> tuple[Any, ...]:
        flat = [tree.flatten(p) for p in primals]

        def of_leaves(*leaf_lists: Any) -> Any:
            return fn(
                *(tree.unflatten(td, ls) for ls, (_, td) in zip(leaf_lists, flat, strict=True))
            )

        return tuple(
            tf.jvp(
                of_leaves,
                tuple(ls for ls, _ in flat),
                tuple(tree.leaves(t) for t in tangents),
                has_aux=has_aux,
            )
        )

    def vmap(
        self, fn: Callable[..., Any], in_dims: tuple[Any, ...], out_dims: Any = 0
    ) -> Callable[..., Any]:
        return tf.vmap(fn, in_dims=in_dims, out_dims=out_dims, randomness="same")

    def map_tasks(
        self, fn: Callable[..., Any], in_dims: tuple[Any, ...], out_dims: Any = 0
    ) -> Callable[..., Any]:
        # Each task draws its own random numbers (dropout, torch.randn in a loss), as a loop
        # over the tasks would; torch.manual_seed makes them reproducible.
        return tf.vmap(fn, in_dims=in_dims, out_dims=out_dims, randomness="different")

    def stop_gradient(self, tree_: Tree) -> Tree:
        # non-array leaves (a Python step count in an optimizer state) carry no gradient
        return tree.map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, tree_)

    def untape(self, tree_: Tree) -> Tree:
        def plain(x: Any) -> Any:
            if (
                isinstance(x, torch.Tensor)
                and x.requires_grad
                and not is_functorch_wrapped_tensor(x)
            ):
                return x.detach()
            return x

        return tree.map(plain, tree_)

    def epsilon(self, leaf: Any) -> float:
        return float(torch.finfo(leaf.dtype).eps)

    def device(self, leaf: Any) -> str | None:
        return str(leaf.device) if _plain(leaf) else None

    def is_in_place_error(self, err: BaseException) -> bool:
        text = str(err)
        return "in-place operation" in text or "inplace operation" in text

    def is_traced(self, tree_: Tree) -> bool:
        return any(
            isinstance(x, torch.Tensor) and is_functorch_wrapped_tensor(x)
            for x in tree.leaves(tree_)
        )

    def isolate(self, tree_: Tree) -> Tree:
        return tree.map(_clone, tree_)

    def versions(self, tree_: Tree) -> tuple[int | None, ...]:
        return tuple(_version(x) for x in tree.leaves(tree_))

    def unalias(self, tree_: Tree, *inputs: Tree) -> Tree:
        taken = {_storage(x) for x in tree.leaves(inputs)} - {None}
        if not taken:
            return tree_
        return tree.map(lambda x: _clone(x) if _storage(x) in taken else x, tree_)

    def zeros_like(self, tree_: Tree) -> Tree:
        return tree.map(torch.zeros_like, tree_)

    def all_finite(self, tree_: Tree) -> Any:
        flags = [
            torch.isfinite(x).all() if isinstance(x, torch.Tensor) else torch.tensor(_finite(x))
            for x in tree.leaves(tree_)
        ]
        if not flags:
            return torch.tensor(True)
        return torch.stack(flags).all()

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return torch.where(cond, a, b)

    def scalar(self, value: float, like: Any) -> Any:
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)

    def host_bool(self, x: Any) -> bool | None:
        try:
            return bool(x)
        except RuntimeError:  # inside torch.func.vmap there is no one value on the host
            return None

    def to_float(self, x: Any) -> float:
        return float(x.detach().cpu().item()) if isinstance(x, torch.Tensor) else float(x)

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        return x.detach().cpu().to(torch.float64).numpy()

    def from_numpy(self, x: np.ndarray[Any, Any], like: Any) -> Any:
        return torch.as_tensor(np.asarray(x), dtype=like.dtype, device=like.device)

    def ravel(self, tree_: Tree) -> tuple[Any, Callable[[Any], Tree]]:
        flat, treedef = tree.flatten(tree_)
        shapes = [x.shape for x in flat]
        sizes = [x.numel() for x in flat]
        vec = torch.cat([x.reshape(-1) for x in flat]) if flat else torch.zeros(0)

        def unravel(v: Any) -> Tree:
            parts = torch.split(v, sizes) if sizes else []
            return tree.unflatten(
                treedef, [p.reshape(s) for p, s in zip(parts, shapes, strict=True)]
            )

        return vec, unravel

    def stack(self, xs: Sequence[Any]) -> Any:
        return torch.stack(list(xs))

    def dense_solve(self, a: Any, b: Any) -> Any:
        return torch.linalg.solve(a, b)

    def eigvalsh(self, a: Any) -> Any:
        return torch.linalg.eigvalsh(a)


def _plain(x: object) -> bool:
    """A tensor of the caller's, outside any torch.func transform (a wrapper has no storage)."""
    return isinstance(x, torch.Tensor) and not is_functorch_wrapped_tensor(x)


def _clone(x: Any) -> Any:
    return x.clone() if isinstance(x, torch.Tensor) else x


def _version(x: object) -> int | None:
    """The in-place modification counter of a plain tensor (shared with its detached views)."""
    return int(x._version) if _plain(x) else None  # pyright: ignore[reportAttributeAccessIssue]


def _storage(x: object) -> int | None:
    """Where a plain tensor's memory lives (its storage's address), for aliasing checks."""
    if not _plain(x) or x.device.type == "meta":  # pyright: ignore[reportAttributeAccessIssue]
        return None
    return int(x.untyped_storage().data_ptr())  # pyright: ignore[reportAttributeAccessIssue]


def _finite(x: Any) -> bool:
    """A non-tensor leaf: numbers must be finite; other objects (strings, …) are not numbers."""
    return not isinstance(x, int | float) or math.isfinite(x)
