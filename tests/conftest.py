"""Shared test settings: hypothesis replays from one seed; the ``fw`` framework fixture."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from _frameworks import Framework
from hypothesis import HealthCheck, settings

# Every property test draws its examples from one fixed seed, so a failure replays exactly.
# ``fw`` is function-scoped but holds no state between hypothesis examples (it only switches
# JAX's float64 flag for the test), hence the suppressed function_scoped_fixture check.
settings.register_profile(
    "bilevel",
    derandomize=True,
    deadline=None,
    max_examples=int(os.environ.get("BILEVEL_HYPOTHESIS_EXAMPLES", "15")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.load_profile("bilevel")

# Under pytest-xdist (make test runs ``-n auto``) each worker already has a core: one torch
# thread per worker; alone, at most two.
torch.set_num_threads(
    1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads())
)


@pytest.fixture(params=["torch", pytest.param("jax", marks=pytest.mark.jax)])
def fw(request: pytest.FixtureRequest) -> Iterator[Framework]:
    """The framework a test runs on; JAX runs with ``jax_enable_x64`` on (restored after), and
    is skipped where JAX is not installed (``pip install 'bilevel[jax]'``)."""
    if request.param == "torch":
        yield Framework("torch")
        return
    jax = pytest.importorskip("jax")
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield Framework("jax")
    finally:
        jax.config.update("jax_enable_x64", old)
