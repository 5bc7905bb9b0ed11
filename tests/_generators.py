"""Seeded float64 NumPy generators shared by the property and closed-form tests.

Data are drawn in NumPy so that the torch and the JAX run of a test (``tests/_frameworks.py``)
see exactly the same numbers; convert with ``fw.tree(...)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

F64 = np.float64
Generator = np.random.Generator
Array = np.ndarray[Any, Any]


def rng(seed: int) -> Generator:
    """A NumPy generator seeded with ``seed``."""
    return np.random.default_rng(seed)


def randn(g: Generator, *shape: int) -> Array:
    """Standard normal float64 draws (a 0-d array for no shape)."""
    return np.asarray(g.standard_normal(shape), dtype=F64)


def rand(g: Generator, *shape: int) -> Array:
    """Uniform [0, 1) float64 draws (a 0-d array for no shape)."""
    return np.asarray(g.random(shape), dtype=F64)


def spd_with(g: Generator, eig: Array) -> tuple[Array, Array]:
    """A random symmetric matrix with eigenvalues ``eig``, and its eigenvectors (columns)."""
    q, _ = np.linalg.qr(randn(g, len(eig), len(eig)))
    a = (q * eig) @ q.T
    return (a + a.T) / 2, q


def spd(g: Generator, n: int, lo: float, hi: float) -> Array:
    """A random symmetric matrix whose spectrum lies in [lo, hi] and touches both ends."""
    eig = lo + (hi - lo) * rand(g, n)
    eig[0], eig[-1] = lo, hi
    return spd_with(g, eig)[0]
