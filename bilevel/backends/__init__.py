"""The AD seam: the :class:`Backend` protocol, its implementations, choosing one from leaf types.

The backend is never a flag: it follows from the types of the arrays in the meta-parameters and
tasks (``torch.Tensor``: :class:`TorchBackend`; ``jax.Array``: :class:`JaxBackend`). Importing
:mod:`bilevel` imports no AD framework; the first array of a framework does.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from bilevel import tree
from bilevel.backends.base import Array, Backend, Tree

# ``TorchBackend`` and ``JaxBackend`` are importable from here too, loaded lazily by
# ``__getattr__`` (importing ``JaxBackend`` without JAX installed says how to install it).
__all__ = ["Array", "Backend", "Tree", "backend_for"]


def _framework(leaf: object) -> str | None:
    module = type(leaf).__module__.split(".")[0]
    if module == "torch":
        return "torch"
    if module in ("jax", "jaxlib"):
        # a jax.Array (tracers included), not another JAX object such as a dtype or sharding;
        # JAX is imported already, since the leaf's type lives in it
        jax = sys.modules.get("jax")
        return "jax" if jax is not None and isinstance(leaf, jax.Array) else None
    return None


def _installed(name: str) -> bool:
    """Whether the top-level package ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def backend_for(*trees: Tree, what: str = "hypergrad") -> Backend:
    """The backend that owns the array leaves of ``trees``.

    Args:
        *trees: pytrees whose array leaves decide the backend; non-array leaves are ignored.
        what: the name of the calling function, used in error messages.

    Returns:
        The backend instance.

    Raises:
        TypeError: if no leaf is an array of a known framework (naming the extras to install
            when neither PyTorch nor JAX is installed), or leaves of two frameworks mix.

    Example:
        >>> import torch
        >>> from bilevel.backends import backend_for
        >>> backend_for({"w": torch.zeros(2)}).name
        'torch'
    """
    found: dict[str, str] = {}
    for i, t in enumerate(trees):
        flat, treedef = tree.flatten(t)
        for j, leaf in enumerate(flat):
            fw = _framework(leaf)
            if fw is not None and fw not in found:
                found[fw] = f"leaf {j} of argument {i} ({type(leaf).__name__} in {treedef})"
    if len(found) > 1:
        detail = "; ".join(f"{k}: {v}" for k, v in found.items())
        raise TypeError(
            f"{what}: the arrays belong to more than one framework ({detail}); "
            "write the whole problem with one framework's arrays"
        )
    if not found:
        if not any(_installed(name) for name in ("torch", "jax")):
            raise TypeError(
                f"{what}: found no torch.Tensor or jax.Array leaf in the meta-parameters or "
                "task, and neither PyTorch nor JAX is installed: bilevel differentiates with one "
                "of them, an extra of its own: pip install 'bilevel[torch]' or "
                "pip install 'bilevel[jax]', then pass torch tensors or JAX arrays"
            )
        raise TypeError(
            f"{what}: found no torch.Tensor or jax.Array leaf in the meta-parameters or task; "
            "pass parameters as a pytree (dict/list/tuple) of tensors"
        )
    fw = next(iter(found))
    if fw == "torch":
        from bilevel.backends.torch import TorchBackend as torch_backend

        return torch_backend()
    from bilevel.backends.jax import JaxBackend as jax_backend

    return jax_backend()


def __getattr__(name: str) -> Any:
    # PEP 562: import a framework only when its backend class is asked for.
    if name == "TorchBackend":
        from bilevel.backends.torch import TorchBackend as cls

        return cls
    if name == "JaxBackend":
        from bilevel.backends.jax import JaxBackend as jax_cls  # says how to install JAX

        return jax_cls
    raise AttributeError(f"module 'bilevel.backends' has no attribute {name!r}")
