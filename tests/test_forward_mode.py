"""ForwardMode's chunking: any chunk size gives the same hypergradient as Unrolled.

Every test that computes a hypergradient runs once per framework (the ``fw`` fixture,
``tests/_frameworks.py``): the data are drawn in NumPy and the problem is written once.
"""

from __future__ import annotations

import numpy as np
import pytest
from _frameworks import Framework, assert_close64
from _generators import randn, rng

from bilevel import Batch, ForwardMode, Problem, Unrolled, hypergrad, solvers

PROBLEM = Problem(
    init=lambda m, t: m["w"] * m["s"],
    inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2 + (w**4).sum() / 4 + m["s"] * w.sum(),
    outer_loss=lambda w, m, t: (w**2).sum() + m["s"] ** 2,
)
META = {"w": np.array([0.3, -0.2, 0.5]), "s": np.array(1.5)}
GD = solvers.GradientDescent(lr=0.1, steps=6)


@pytest.mark.parametrize("chunk", [None, 1, 3, 4, 100])
def test_every_chunk_size_gives_the_unrolled_hypergradient(
    fw: Framework, chunk: int | None
) -> None:
    meta, task = fw.tree(META), fw.array(np.array([1.0, -1.0, 0.5]))
    ref = hypergrad(PROBLEM, GD, meta, task, strategy=Unrolled())
    res = hypergrad(PROBLEM, GD, meta, task, strategy=ForwardMode(chunk=chunk))
    # forward and reverse mode evaluate the same chain rule in another order: float64 rounding
    for k in META:
        assert_close64(res.grad[k], ref.grad[k], rtol=1e-12, atol=1e-14, what=k)
    # The same inner iterations: bitwise equal on torch. On JAX a repeated call runs as one
    # compiled (fused) program, whose rounding differs by a few ulps per step from the eager
    # one: measured 5e-15 relative after the 6 steps; 1e-13 allowed.
    exact = fw.name == "torch"
    assert_close64(res.params, ref.params, rtol=0 if exact else 1e-13, atol=0, what="params")
    assert float(res.value) == float(ref.value)


def test_chunked_forward_mode_under_a_batch(fw: Framework) -> None:
    meta, tasks = fw.tree(META), Batch(fw.array(randn(rng(1), 4, 3)))
    ref = hypergrad(PROBLEM, GD, meta, tasks, strategy=Unrolled())
    res = hypergrad(PROBLEM, GD, meta, tasks, strategy=ForwardMode(chunk=2))
    for k in META:  # as above: float64 rounding
        assert_close64(res.grad[k], ref.grad[k], rtol=1e-12, atol=1e-14, what=k)


# Argument validation only: no arrays, so no framework to run on.
@pytest.mark.parametrize(("chunk", "error"), [(0, ValueError), (-2, ValueError), (1.5, TypeError)])
def test_chunk_must_be_a_positive_int(chunk: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"ForwardMode\(chunk=.*\): chunk"):
        ForwardMode(chunk=chunk)  # type: ignore[arg-type]
