"""Seeded float64 generators shared by the property and closed-form tests."""

from __future__ import annotations

import torch

F64 = torch.float64


def rng(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    """Standard normal float64 draws."""
    return torch.randn(tuple(shape), generator=g, dtype=F64)


def rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    """Uniform [0, 1) float64 draws."""
    return torch.rand(tuple(shape), generator=g, dtype=F64)


def spd_with(g: torch.Generator, eig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A random symmetric matrix with eigenvalues ``eig``, and its eigenvectors (columns)."""
    q, _ = torch.linalg.qr(randn(g, len(eig), len(eig)))
    a = (q * eig) @ q.T
    return (a + a.T) / 2, q


def spd(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    """A random symmetric matrix whose spectrum lies in [lo, hi] and touches both ends."""
    eig = lo + (hi - lo) * rand(g, n)
    eig[0], eig[-1] = lo, hi
    return spd_with(g, eig)[0]
