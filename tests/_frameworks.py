"""The two array frameworks the core suites run on: one test body, parametrised by ``fw``.

A test asks for the ``fw`` fixture (``tests/conftest.py``) and runs once per framework: on torch
and, where JAX is installed, on JAX with ``jax_enable_x64`` on for the test. Problem data are
drawn in NumPy (``_generators``), so both runs see the same numbers, and converted with
:meth:`Framework.tree`. Problem functions stay written once by taking their array functions from
:func:`xp`, the namespace (``torch`` or ``jax.numpy``) of an array they receive; array methods and
operators (``@``, ``.sum()``, ``.T``, ``**``) are the same in both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bilevel import tree

Tree = Any


def xp(x: Any) -> Any:
    """The array namespace of ``x``: ``torch`` for tensors (also inside ``torch.func``),
    ``jax.numpy`` for JAX arrays and tracers."""
    if isinstance(x, torch.Tensor):
        return torch
    import jax.numpy as jnp

    return jnp


@dataclass(frozen=True)
class Framework:
    """One of ``"torch"`` and ``"jax"``: converts NumPy data in and results out."""

    name: str

    def __repr__(self) -> str:
        return self.name

    def array(self, x: Any) -> Any:
        """A framework array with ``x``'s values and dtype (NumPy arrays, floats)."""
        a = np.asarray(x)
        if self.name == "torch":
            return torch.from_numpy(a.copy())
        import jax.numpy as jnp

        return jnp.asarray(a)

    def tree(self, t: Tree) -> Tree:
        """``t`` with every NumPy leaf (arrays and NumPy scalars such as ``0.3 * randn(g)``)
        converted by :meth:`array`; other leaves untouched."""
        return tree.map(lambda x: self.array(x) if isinstance(x, np.ndarray | np.generic) else x, t)

    @property
    def ns(self) -> Any:
        """The array namespace, ``torch`` or ``jax.numpy``."""
        if self.name == "torch":
            return torch
        import jax.numpy as jnp

        return jnp


def numpy(t: Tree) -> Tree:
    """``t`` with every array leaf (torch or JAX) as a float64-or-native NumPy array."""

    def one(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
        if hasattr(x, "__array__"):
            return np.asarray(x)
        return x

    return tree.map(one, t)


def flat(t: Tree) -> np.ndarray[Any, Any]:
    """Every leaf of ``t`` raveled and concatenated, in flattening order, as one NumPy vector."""
    parts = [np.asarray(x, dtype=np.float64).reshape(-1) for x in tree.leaves(numpy(t))]
    return np.concatenate(parts) if parts else np.zeros(0)


def rel_err(a: Tree, b: Tree) -> float:
    """``‖a − b‖ / ‖b‖`` over all leaves (``b`` the reference)."""
    fa, fb = flat(a), flat(b)
    return float(np.linalg.norm(fa - fb) / max(float(np.linalg.norm(fb)), 1e-300))


def sigmoid(x: Any) -> Any:
    """The framework's own logistic sigmoid (``jax.numpy`` has none: it is ``jax.nn.sigmoid``)."""
    if isinstance(x, torch.Tensor):
        return torch.sigmoid(x)
    import jax

    return jax.nn.sigmoid(x)


def assert_close(
    got: Tree, want: Tree, *, rtol: float, atol: float = 0.0, what: str = "", dtype: Any = None
) -> None:
    """Leafwise ``|got − want| ≤ atol + rtol·|want|`` with equal structures and shapes; with
    ``dtype``, every leaf of ``got`` must also have that NumPy dtype (as
    ``torch.testing.assert_close`` checks: a float32 leak would spoil a float64 tolerance)."""
    g_leaves, w_leaves = tree.leaves(numpy(got)), tree.leaves(numpy(want))
    if dtype is not None:
        for g in g_leaves:
            assert np.asarray(g).dtype == dtype, f"{what}: dtype {np.asarray(g).dtype}, not {dtype}"
    assert len(g_leaves) == len(w_leaves), f"{what}: {len(g_leaves)} vs {len(w_leaves)} leaves"
    for g, w in zip(g_leaves, w_leaves, strict=True):
        assert np.shape(g) == np.shape(w), f"{what}: shape {np.shape(g)} vs {np.shape(w)}"
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=what)


def assert_close64(
    got: Tree, want: Tree, *, rtol: float, atol: float = 0.0, what: str = ""
) -> None:
    """:func:`assert_close` with every leaf of ``got`` required to be float64."""
    assert_close(got, want, rtol=rtol, atol=atol, what=what, dtype=np.float64)


def param_id(value: object) -> str:
    """``repr(value)`` without memory addresses (``<function f at 0x…>`` → ``<function f>``):
    a parametrised test's id must be the same in every pytest-xdist worker."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))
