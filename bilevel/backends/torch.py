"""The PyTorch backend, built on ``torch.func``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import func as tf
from torch._C._functorch import is_functorch_wrapped_tensor

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

    def value_and_grad(
        self, fn: Callable[..., Any], argnums: int | tuple[int, ...] = 0, has_aux: bool = False
    ) -> Callable[..., tuple[Any, Any]]:
        gv = tf.grad_and_value(fn, argnums=argnums, has_aux=has_aux)

        def wrapped(*args: Any) -> tuple[Any, Any]:
            g, v = gv(*args)
            return v, g

        return wrapped

    def compiled(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn

    def vjp(
        self, fn: Callable[..., Any], *primals: Tree
    ) -> tuple[Any, Callable[[Any], tuple[Any, ...]]]:
        out, vjp_fn = cast("tuple[Any, Callable[[Any], tuple[Any, ...]]]", tf.vjp(fn, *primals))
        return out, vjp_fn

    def jvp(
        self,
        fn: Callable[..., Any],
        primals: tuple[Tree, ...],
        tangents: tuple[Tree, ...],
        has_aux: bool = False,
    ) -> tuple[Any, ...]:
        return tuple(tf.jvp(fn, primals, tangents, has_aux=has_aux))

    def vmap(
        self, fn: Callable[..., Any], in_dims: tuple[Any, ...], out_dims: Any = 0
    ) -> Callable[..., Any]:
        return tf.vmap(fn, in_dims=in_dims, out_dims=out_dims, randomness="same")

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


def _finite(x: Any) -> bool:
    """A non-tensor leaf: numbers must be finite; other objects (strings, …) are not numbers."""
    return not isinstance(x, int | float) or math.isfinite(x)
