"""Implicit's stationarity test does not depend on the inner loss's scale.

``‖G(φ*)‖`` is judged against ``stationarity_tol·max(‖H(φ* − φ₀)‖, ‖Hφ*‖)``, from the start of the
inner solve, so multiplying the inner loss by c (same minimiser, step size divided by c, hence
the same iterates up to rounding) changes neither the verdict nor the reported ratio. The
absolute limit it replaces passed a 10-step solve far from φ* at scale 1e-6 (‖∇f‖ ≈ 2e-6 < 1e-4,
hypergradient 400× too small) and raised false alarms at scale 1e4 in float32 (rounding alone
leaves ‖∇f‖ ≈ 1e4·ε₃₂·‖H‖‖φ‖ ≫ 1e-4).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from _frameworks import Framework, numpy

from bilevel import Implicit, Problem, StationarityWarning, hypergrad, solvers

D = 5
_R = np.random.default_rng(0)
_A = _R.standard_normal((D, D))
H = _A @ _A.T + 0.1 * np.eye(D)  # SPD, λ_min ≈ 0.1: GD with lr 0.05 contracts by ≤ 0.995/step
META = np.ones(D)
TARGET = np.zeros(D)
# F = ‖φ* − τ‖², φ* = H⁻¹θ: dF/dθ = 2 H⁻¹(φ* − τ)
EXACT = 2 * np.linalg.solve(H, np.linalg.solve(H, META) - TARGET)


def _quadratic(scale: float, dtype: Any, fw: Framework) -> Problem:
    h = fw.array(H.astype(dtype))
    return Problem(
        init=lambda m, t: m * 0,
        inner_loss=lambda w, m, t: scale * (0.5 * w @ h @ w - m @ w),
        outer_loss=lambda w, m, t: ((w - t) ** 2).sum(),
    )


def _run(fw: Framework, scale: float, dtype: Any, steps: int) -> tuple[Any, list[str]]:
    problem = _quadratic(scale, dtype, fw)
    solver = solvers.GradientDescent(lr=0.05 / scale, steps=steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = hypergrad(
            problem,
            solver,
            fw.array(META.astype(dtype)),
            fw.array(TARGET.astype(dtype)),
            strategy=Implicit(solvers.CG(maxiter=50, tol=1e-5)),
        )
    return res, [w.category.__name__ for w in caught if issubclass(w.category, StationarityWarning)]


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_an_unsolved_inner_problem_warns_at_every_loss_scale(fw: Framework, scale: float) -> None:
    res, warned = _run(fw, scale, np.float64, steps=10)
    assert warned == ["StationarityWarning"]
    # the hypergradient is far off, which is what the warning is for (88 % relative error)
    err = np.linalg.norm(numpy(res.grad) - EXACT) / np.linalg.norm(EXACT)
    assert err > 0.8
    # the verdict's ratio is the same at every scale: the iterates are the same up to rounding
    ratio = res.info.stationarity / res.info.stationarity_limit
    assert ratio == pytest.approx(13210.665, rel=1e-6)  # measured at scale 1 (rounding: 1e-15)


@pytest.mark.parametrize(
    ("scale", "dtype"), [(1e-6, np.float64), (1.0, np.float32), (1e4, np.float32)]
)
def test_a_solved_inner_problem_does_not_warn_at_any_scale(
    fw: Framework, scale: float, dtype: Any
) -> None:
    # 3000 steps contract the error by ≤ 0.995³⁰⁰⁰ ≈ 3e-7 relative to the start: solved.
    res, warned = _run(fw, scale, dtype, steps=3000)
    assert warned == []
    assert res.info.stationarity <= res.info.stationarity_limit
    rtol = 1e-4 if dtype == np.float32 else 1e-6  # float32: κ(H)·ε₃₂ ≈ 1e3·1.2e-7 ≈ 1e-4
    np.testing.assert_allclose(
        numpy(res.grad), EXACT, rtol=rtol * 10, atol=rtol * 10 * np.abs(EXACT).max()
    )
