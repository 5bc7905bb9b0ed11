"""Every hypergradient strategy against central finite differences of exactly its map.

``bilevel.testing.check_hypergrad`` takes float64 central differences (h = 1e-5) of the map a
strategy claims to differentiate (``strategy.reference``) and compares them with
``hypergrad(...).grad``. Its default tolerance, ``|ad − fd| ≤ 1e-10 + 1e-6·max(|ad|, |fd|, ‖g‖)``,
comes from the FD error bound ``h²/6·|F'''| + u·|F|/h ≈ 1.7e-11·|F'''| + 1.1e-11·|F|`` (see the
module docstring of ``bilevel.testing``); every check below uses it unchanged unless a comment
says otherwise.

The problems are generated from hypothesis-drawn seeds and sizes:

(a) strongly convex quadratic inner problems with known solutions,
(b) small tanh MLPs (MAML-style ``init = meta``) with parameter leaves of mixed shapes, 0-d too,
(c) ``init = 2·θ["w"]`` with θ also entering the inner and outer losses (a 0-d leaf ``s``),
(d) a learned update rule (no inner loss) with a contractive fixed point,
(e) a :class:`~bilevel.Batch` of quadratic tasks (vmapped and looped strategies).

For ``Implicit`` the map is the forward solve ``θ ↦ F(φ_K(θ), θ)``; its derivative equals the
implicit formula up to ``O(ρ^K)`` where ρ is the inner contraction rate, so every implicit
problem below is run for enough steps that ``ρ^K ≤ 1e-12`` (far below the checker's 1e-6).

Negative controls prove that the checker separates maps: a strategy whose ``compute`` is one
map's gradient and whose ``reference`` is another's must fail it.

Every test runs on torch and on JAX (the ``fw`` fixture, ``tests/_frameworks.py``): the data are
drawn in NumPy, so both runs see the same numbers, and each problem function is written once,
taking its array functions from :func:`xp`. The problems are module-level objects, built once,
so that JAX compiles each inner loss once per shape rather than once per hypothesis example.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from _frameworks import Framework, assert_close, flat, numpy, rel_err, xp
from _generators import rand, randn, rng, spd
from hypothesis import given, settings
from hypothesis import strategies as st

from bilevel import (
    Batch,
    FirstOrder,
    ForwardMode,
    Implicit,
    LinearSolveWarning,
    Problem,
    StationarityWarning,
    Truncated,
    Unrolled,
    hypergrad,
    solvers,
)
from bilevel.testing import check_hypergrad

# A warning from bilevel means "this hypergradient may be inaccurate": none may pass silently
# in a test that expects an exact answer. Tests that expect one assert it with pytest.warns.
pytestmark = pytest.mark.filterwarnings("error::bilevel.BilevelWarning")

Tree = Any
Array = Any  # a torch tensor or a JAX array (tracers and torch.func wrappers included)
NDArray = np.ndarray[Any, Any]  # problem data, drawn in NumPy and converted with fw.tree

seeds = st.integers(min_value=0, max_value=2**31 - 1)


# --------------------------------------------------------------------------- generators


def _steps_for(rate: float, target: float = 1e-15) -> int:
    """Steps K with rate**K <= target for a linearly convergent iteration."""
    return math.ceil(math.log(target) / math.log(rate))


# (a) quadratic: f = ½φᵀAφ − φᵀ(Bθ + c), F = ½‖Cφ − d‖² + E·‖θ‖², φ₀ = Pθ.
# All matrices live in the task, so a Batch stacks them and every task has its own problem.
E = 0.3


def _quad_init(theta: Array, t: dict[str, Array]) -> Array:
    return t["P"] @ theta


def _quad_inner(phi: Array, theta: Array, t: dict[str, Array]) -> Any:
    return 0.5 * phi @ (t["A"] @ phi) - phi @ (t["B"] @ theta + t["c"])


def _quad_outer(phi: Array, theta: Array, t: dict[str, Array]) -> Any:
    r = t["C"] @ phi - t["d"]
    return 0.5 * (r @ r) + E * (theta @ theta)


QUADRATIC = Problem(init=_quad_init, inner_loss=_quad_inner, outer_loss=_quad_outer)

# Spectrum of A for the quadratic problems: GD with the optimal step 2/(LO+HI) contracts at
# ρ = (HI−LO)/(HI+LO) = 1/2, so 40 steps leave ρ^K ≈ 1e-12 relative error.
LO, HI = 1.0, 3.0
QUAD_LR = 2 / (LO + HI)
QUAD_IMPLICIT_STEPS = 40


def quadratic_task(seed: int, n: int, m: int, p: int = 3) -> tuple[NDArray, dict[str, Any]]:
    """θ and the task, as NumPy arrays (convert with ``fw.tree``)."""
    g = rng(seed)
    task = {
        "A": spd(g, n, LO, HI),
        "B": randn(g, n, m),
        "c": randn(g, n),
        "C": randn(g, p, n),
        "d": randn(g, p),
        "P": randn(g, n, m),
    }
    return randn(g, m), task


# (b) MLP with leaves of shapes (h, din), (h,), (h,), ().
def _net(p: dict[str, Array], x: Array) -> Array:
    return xp(x).tanh(x @ p["W1"].T + p["b1"]) @ p["w2"] + p["b2"]


def _mse(p: dict[str, Array], x: Array, y: Array) -> Any:
    return 0.5 * ((_net(p, x) - y) ** 2).mean()


def mlp_problem(lam: float) -> Problem:
    """MAML (lam = 0) or iMAML (lam > 0: proximal term λ/2‖φ − θ‖²) on the MLP.

    Build it once (``MAML``, ``IMAML`` below): each call makes new loss functions, which JAX
    would compile afresh.
    """

    def inner(p: Tree, meta: Tree, t: Tree) -> Any:
        loss = _mse(p, t["xs"], t["ys"])
        if lam:
            loss = loss + lam / 2 * sum(((p[k] - meta[k]) ** 2).sum() for k in p)
        return loss

    return Problem(
        init=lambda meta, t: meta,
        inner_loss=inner,
        outer_loss=lambda p, meta, t: _mse(p, t["xq"], t["yq"]),
    )


def mlp_data(seed: int, din: int, hidden: int) -> tuple[Tree, Tree]:
    g = rng(seed)
    meta = {
        "W1": 0.5 * randn(g, hidden, din),
        "b1": 0.3 * randn(g, hidden),
        "w2": 0.5 * randn(g, hidden),
        "b2": np.asarray(0.3 * randn(g)),  # a 0-d array (NumPy makes 0.3·x a scalar)
    }
    task = {
        "xs": randn(g, 6, din),
        "ys": randn(g, 6),
        "xq": randn(g, 5, din),
        "yq": randn(g, 5),
    }
    return meta, task


# iMAML on the MLP: the support loss' Hessian at θ lies in [−4.1, 5.0] for these data and
# weights (measured over 900 draws covering every din, hidden ≤ 3 used below), and the proximal
# term keeps φ near θ; so with λ = 12 the inner Hessian lies in ~[7, 17] and GD with
# lr = 2/(7+17) contracts at ρ ≈ 0.42: 45 steps give ρ^K ≈ 1e-17.
MLP_LAM, MLP_LR, MLP_STEPS = 12.0, 2 / 24, 45
MLP_SPECTRUM = (7.0, 17.0)

MAML = mlp_problem(0.0)
IMAML = mlp_problem(MLP_LAM)


# (c) init = 2·w; θ = {"w": (n,), "s": ()} enters init, inner and outer losses.
def _c_inner(phi: Array, theta: Tree, t: Tree) -> Any:
    r = t["X"] @ phi - t["y"]
    ns = xp(phi)
    return (
        0.5 * ns.exp(theta["s"]) * ((phi - theta["w"]) ** 2).sum()
        + 0.5 * (r @ r)
        + 0.5 * ns.log(ns.cosh(phi)).sum()
    )


def _c_outer(phi: Array, theta: Tree, t: Tree) -> Any:
    return 0.5 * ((phi - t["z"]) ** 2).sum() + theta["s"] * xp(phi).tanh(theta["w"]).sum()


INIT_DEPENDENT = Problem(
    init=lambda theta, t: 2 * theta["w"], inner_loss=_c_inner, outer_loss=_c_outer
)


def init_dependent_data(seed: int, n: int) -> tuple[Tree, Tree, float, float]:
    """θ, task (NumPy), and bounds (μ, L) on the inner Hessian's spectrum.

    Hessian = e^s·I + XᵀX + ½·diag(sech²φ): between e^s and e^s + σ_max(X)² + ½.
    """
    g = rng(seed)
    x = 0.5 * randn(g, 2 * n, n) / math.sqrt(2 * n)
    s = np.asarray(0.5 + rand(g))  # s ∈ [0.5, 1.5], a 0-d array
    theta = {"w": randn(g, n), "s": s}
    task = {"X": x, "y": randn(g, 2 * n), "z": randn(g, n)}
    mu = math.exp(float(s))
    big = mu + float(np.linalg.norm(x, ord=2)) ** 2 + 0.5
    return theta, task, mu, big


# (d) learned update rule, no inner loss: φ ← φ + c·(tanh(Mφ + b + x) − φ), c = 0.7 + 0.3σ(a).
# The step's Jacobian (1−c)I + c·diag(sech²)M has norm ≤ 1 − c(1 − ‖M‖) ≤ 0.51 for ‖M‖ ≤ 0.3.
def _rule(phi: Array, theta: Tree, t: Tree) -> Array:
    ns = xp(phi)
    c = 0.7 + 0.3 / (1 + ns.exp(-theta["a"]))  # 0.7 + 0.3·σ(a)
    return c * (ns.tanh(theta["M"] @ phi + theta["b"] + t["x"]) - phi)


RULE_PROBLEM = Problem(
    init=lambda theta, t: 0.5 * theta["b"],
    outer_loss=lambda phi, theta, t: 0.5 * ((phi - t["y"]) ** 2).sum() + 0.1 * theta["a"] ** 2,
)
RULE_RATE = 0.51
RULE_IMPLICIT_STEPS = _steps_for(RULE_RATE)


def rule_data(seed: int, n: int) -> tuple[Tree, Tree]:
    g = rng(seed)
    m = randn(g, n, n)
    m = 0.3 * m / np.linalg.norm(m, ord=2)
    theta = {"a": randn(g), "M": m, "b": randn(g, n)}
    return theta, {"x": randn(g, n), "y": randn(g, n)}


# --------------------------------------------------------------------------- strategy menus

UNROLLED_KINDS = [
    "unrolled",
    "truncated<K",
    "truncated=K",
    "truncated>K",
    "first_order",
    "forward_mode",
]
IMPLICIT_KINDS = ["cg", "minres", "direct", "neumann", "gmres"]


def unrolled_family(kind: str, steps: int, extra: int) -> tuple[Any, int]:
    """(strategy, K) for a kind; K is raised where the kind needs it (T < K needs K ≥ 2)."""
    if kind == "unrolled":
        return Unrolled(), steps
    if kind == "truncated<K":
        k = max(steps, 2)
        return Truncated(1 + extra % (k - 1)), k
    if kind == "truncated=K":
        k = max(steps, 1)
        return Truncated(k), k
    if kind == "truncated>K":
        return Truncated(steps + 1 + extra), steps
    if kind == "first_order":
        return FirstOrder(), steps
    if kind == "forward_mode":
        return ForwardMode(), steps
    raise AssertionError(kind)


def implicit(kind: str, spectrum: tuple[float, float] | None) -> Implicit:
    """Implicit with a linear solver of ``kind`` asked for ~1e-13 relative residual.

    ``spectrum`` bounds the (SPD) inner Hessian, for Neumann's α = 2/(lo+hi); ``None`` means a
    fixed-point system ``I − ∂step`` with ‖∂step‖ < 1, where Neumann with α = 1 is the series
    Σ(∂step)ᵀᵏ.
    """
    if kind == "cg":
        return Implicit(solvers.CG(maxiter=200, tol=1e-13))
    if kind == "minres":
        return Implicit(solvers.MINRES(maxiter=200, tol=1e-13))
    if kind == "direct":
        return Implicit(solvers.Direct())
    if kind == "gmres":
        return Implicit(solvers.GMRES(maxiter=50, tol=1e-13))
    if kind == "neumann":
        alpha = 1.0 if spectrum is None else 2 / (spectrum[0] + spectrum[1])
        return Implicit(solvers.Neumann(maxiter=1000, alpha=alpha, tol=1e-13))
    raise AssertionError(kind)


class Mixed:
    """A strategy whose gradient is one strategy's and whose claimed map is another's.

    Used only as a negative control: check_hypergrad must reject it whenever the two maps
    have different derivatives.
    """

    def __init__(self, compute_of: Any, reference_of: Any) -> None:
        self.compute_of, self.reference_of = compute_of, reference_of

    def __repr__(self) -> str:
        return f"Mixed({self.compute_of!r} vs map of {self.reference_of!r})"

    def validate(self, solver: object) -> None:
        self.compute_of.validate(solver)
        self.reference_of.validate(solver)

    def vectorizable(self, solver: object) -> bool:
        return False

    def compute(self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Any) -> Any:
        return self.compute_of.compute(problem, solver, meta, task, backend)

    def reference(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Any
    ) -> Callable[[Tree], Any]:
        return self.reference_of.reference(problem, solver, meta, task, backend)


@dataclass(frozen=True)
class Scaled:
    """A strategy returning ``base``'s gradient times ``1 + eps`` (a known, tiny error)."""

    base: Any
    eps: float

    def validate(self, solver: object) -> None:
        self.base.validate(solver)

    def vectorizable(self, solver: object) -> bool:
        return False

    def compute(self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Any) -> Any:
        out = self.base.compute(problem, solver, meta, task, backend)
        return out._replace(grad=out.grad * (1 + self.eps))

    def reference(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Any
    ) -> Callable[[Tree], Any]:
        return self.base.reference(problem, solver, meta, task, backend)


# --------------------------------------------------------------------------- (a) quadratic


@pytest.mark.parametrize("kind", UNROLLED_KINDS)
@settings(max_examples=8)
@given(
    seed=seeds,
    n=st.integers(2, 5),
    m=st.integers(1, 3),
    steps=st.integers(0, 6),
    extra=st.integers(0, 3),
    lr_scale=st.floats(0.1, 1.0),
    momentum=st.floats(0.0, 0.9),
)
def test_quadratic_unrolled_family(
    fw: Framework,
    kind: str,
    seed: int,
    n: int,
    m: int,
    steps: int,
    extra: int,
    lr_scale: float,
    momentum: float,
) -> None:
    strategy, k = unrolled_family(kind, steps, extra)
    meta, task = fw.tree(quadratic_task(seed, n, m))
    # lr ≤ 1/λ_max(A) keeps heavy-ball GD stable for every μ in [0, 1).
    solver = solvers.GradientDescent(lr=lr_scale / HI, steps=k, momentum=momentum)
    check_hypergrad(QUADRATIC, solver, meta, task, strategy)


@pytest.mark.parametrize("kind", IMPLICIT_KINDS)
@settings(max_examples=6)
@given(seed=seeds, n=st.integers(2, 6), m=st.integers(1, 3))
def test_quadratic_implicit(fw: Framework, kind: str, seed: int, n: int, m: int) -> None:
    meta, task = fw.tree(quadratic_task(seed, n, m))
    solver = solvers.GradientDescent(lr=QUAD_LR, steps=QUAD_IMPLICIT_STEPS)
    res = check_hypergrad(QUADRATIC, solver, meta, task, implicit(kind, (LO, HI)))
    assert res.worst <= 1


# --------------------------------------------------------------------------- (b) MLP


@pytest.mark.parametrize("kind", UNROLLED_KINDS)
@settings(max_examples=5)
@given(
    seed=seeds,
    din=st.integers(1, 3),
    hidden=st.integers(1, 4),
    steps=st.integers(0, 3),
    extra=st.integers(0, 2),
    lr=st.floats(0.05, 0.5),
)
def test_mlp_unrolled_family(
    fw: Framework, kind: str, seed: int, din: int, hidden: int, steps: int, extra: int, lr: float
) -> None:
    strategy, k = unrolled_family(kind, steps, extra)
    meta, task = fw.tree(mlp_data(seed, din, hidden))
    # Up to 3·4 + 4 + 4 + 1 = 21 meta-scalars; above 12 the checker uses 6 random unit
    # directions (each mixes all leaves, so a wrong leaf still shows).
    check_hypergrad(
        MAML,
        solvers.GradientDescent(lr=lr, steps=k),
        meta,
        task,
        strategy,
        max_coordinates=12,
        directions=6,
    )


@pytest.mark.parametrize("kind", IMPLICIT_KINDS)
@settings(max_examples=3)
@given(seed=seeds, din=st.integers(1, 3), hidden=st.integers(1, 3))
def test_mlp_implicit(fw: Framework, kind: str, seed: int, din: int, hidden: int) -> None:
    meta, task = fw.tree(mlp_data(seed, din, hidden))
    solver = solvers.GradientDescent(lr=MLP_LR, steps=MLP_STEPS)
    check_hypergrad(
        IMAML,
        solver,
        meta,
        task,
        implicit(kind, MLP_SPECTRUM),
        max_coordinates=0,  # always random directions: each FD pair costs two 45-step solves
        directions=3,
    )


# --------------------------------------------------------------------------- (c) init(θ)


@pytest.mark.parametrize("kind", UNROLLED_KINDS)
@settings(max_examples=6)
@given(
    seed=seeds,
    n=st.integers(1, 4),
    steps=st.integers(0, 5),
    extra=st.integers(0, 2),
    lr=st.floats(0.05, 0.4),
)
def test_init_dependent_unrolled_family(
    fw: Framework, kind: str, seed: int, n: int, steps: int, extra: int, lr: float
) -> None:
    strategy, k = unrolled_family(kind, steps, extra)
    theta, task, _, _ = fw.tree(init_dependent_data(seed, n))
    check_hypergrad(INIT_DEPENDENT, solvers.GradientDescent(lr=lr, steps=k), theta, task, strategy)


@pytest.mark.parametrize("kind", IMPLICIT_KINDS)
@settings(max_examples=4)
@given(seed=seeds, n=st.integers(1, 4))
def test_init_dependent_implicit(fw: Framework, kind: str, seed: int, n: int) -> None:
    theta, task, mu, big = fw.tree(init_dependent_data(seed, n))
    # Optimal constant step for a Hessian in [μ, L]; rate (L−μ)/(L+μ).
    solver = solvers.GradientDescent(lr=2 / (mu + big), steps=_steps_for((big - mu) / (big + mu)))
    check_hypergrad(INIT_DEPENDENT, solver, theta, task, implicit(kind, (mu, big)))


def test_first_order_follows_init_scale(fw: Framework) -> None:
    """FirstOrder's init Jacobian is 2·I here: dropping the factor would halve that part."""
    theta_np, task_np, _, _ = init_dependent_data(7, 3)
    solver = solvers.GradientDescent(lr=0.2, steps=3)
    res = hypergrad(
        INIT_DEPENDENT, solver, fw.tree(theta_np), fw.tree(task_np), strategy=FirstOrder()
    )
    phi, w, s = numpy(res.params), theta_np["w"], theta_np["s"]
    # ∂_θF + (∂init/∂θ)ᵀ∇_φF with ∂init/∂w = 2I, computed by hand on F alone: for
    # F = ½‖φ − z‖² + s·Σtanh(w), ∇_φF = φ − z, ∂_wF = s·sech²(w), ∂_sF = Σtanh(w).
    gp = phi - task_np["z"]
    gw = s * (1 - np.tanh(w) ** 2)
    gs = np.tanh(w).sum()
    # Pure float64 roundoff in a few elementwise operations: 1e-12 is 10⁴ ulp of margin.
    assert_close(res.grad["w"], gw + 2 * gp, rtol=1e-12, atol=1e-12, what="w")
    assert_close(res.grad["s"], gs, rtol=1e-12, atol=1e-12, what="s")


# --------------------------------------------------------------------------- (d) update rule

# GMRES and Neumann (α = 1: the series Σ(∂step)ᵀᵏ) for the non-symmetric fixed-point system;
# Direct too, since a transposition slip only shows on a non-symmetric system.
RULE_KINDS = [*UNROLLED_KINDS, "implicit-gmres", "implicit-neumann", "implicit-direct"]


@pytest.mark.parametrize("kind", RULE_KINDS)
@settings(max_examples=5)
@given(seed=seeds, n=st.integers(1, 4), steps=st.integers(0, 6), extra=st.integers(0, 2))
def test_update_rule(fw: Framework, kind: str, seed: int, n: int, steps: int, extra: int) -> None:
    theta, task = fw.tree(rule_data(seed, n))
    if kind.startswith("implicit-"):
        # ρ^K ≤ 1e-15 at the fixed point, so the K-step map's derivative is the implicit one.
        strategy: Any = implicit(kind.removeprefix("implicit-"), None)
        k = RULE_IMPLICIT_STEPS
    else:
        strategy, k = unrolled_family(kind, steps, extra)
    solver = solvers.UpdateRule(_rule, steps=k)
    check_hypergrad(RULE_PROBLEM, solver, theta, task, strategy, max_coordinates=8, directions=6)


@pytest.mark.parametrize("linear", [solvers.CG(), solvers.MINRES()])
def test_update_rule_refuses_symmetric_solvers(fw: Framework, linear: Any) -> None:
    """Without an inner loss the system I − ∂step is not symmetric: CG/MINRES must refuse."""
    theta, task = fw.tree(rule_data(0, 3))
    with pytest.raises(ValueError, match="symmetric"):
        hypergrad(
            RULE_PROBLEM,
            solvers.UpdateRule(_rule, steps=RULE_IMPLICIT_STEPS),
            theta,
            task,
            strategy=Implicit(linear),
        )


# --------------------------------------------------------------------------- (e) batches


def _stack(tasks: list[dict[str, NDArray]]) -> dict[str, NDArray]:
    return {k: np.stack([t[k] for t in tasks]) for k in tasks[0]}


def quadratic_batch(
    seed: int, size: int, n: int, m: int
) -> tuple[NDArray, dict[str, NDArray], list[dict[str, NDArray]]]:
    """θ, the stacked tasks (for a :class:`~bilevel.Batch`) and the tasks one by one, in NumPy."""
    tasks = [quadratic_task(seed + i, n, m)[1] for i in range(size)]
    meta = randn(rng(seed + 10_000), m)
    return meta, _stack(tasks), tasks


@pytest.mark.parametrize("kind", UNROLLED_KINDS + IMPLICIT_KINDS)
@settings(max_examples=3)
@given(
    seed=seeds,
    size=st.integers(1, 3),
    n=st.integers(2, 4),
    m=st.integers(1, 3),
    steps=st.integers(0, 4),
)
def test_batch(fw: Framework, kind: str, seed: int, size: int, n: int, m: int, steps: int) -> None:
    meta, stacked, tasks = fw.tree(quadratic_batch(seed, size, n, m))
    batch = Batch(stacked)
    if kind in IMPLICIT_KINDS:
        strategy: Any = implicit(kind, (LO, HI))
        solver = solvers.GradientDescent(lr=QUAD_LR, steps=QUAD_IMPLICIT_STEPS)
    else:
        strategy, k = unrolled_family(kind, steps, 1)
        solver = solvers.GradientDescent(lr=0.5 / HI, steps=k)
    check_hypergrad(QUADRATIC, solver, meta, batch, strategy)
    # The batch is the mean of its tasks (vmapped for the unrolled family, looped for Implicit):
    # vmap and the loop may sum in another order, so allow a few ulp of the gradient's scale.
    res = hypergrad(QUADRATIC, solver, meta, batch, strategy=strategy)
    singles = [hypergrad(QUADRATIC, solver, meta, t, strategy=strategy) for t in tasks]
    mean_grad = np.stack([numpy(s.grad) for s in singles]).mean(0)
    mean_value = np.stack([numpy(s.value) for s in singles]).mean(0)
    assert_close(res.grad, mean_grad, rtol=1e-12, atol=1e-12, what="grad")
    assert_close(res.value, mean_value, rtol=1e-12, atol=1e-12, what="value")
    assert len(res.task_info) == size


# --------------------------------------------------------------------------- 0-d θ, black box

# θ is one 0-d array (a log-regulariser): f = ½e^θ‖φ − c‖² + ½‖Xφ‖², F = ½‖φ − z‖², φ₀ = θ·1.
SCALAR = Problem(
    init=lambda th, t: th * xp(t["c"]).ones_like(t["c"]),
    inner_loss=lambda phi, th, t: (
        0.5 * xp(phi).exp(th) * ((phi - t["c"]) ** 2).sum() + 0.5 * ((t["X"] @ phi) ** 2).sum()
    ),
    outer_loss=lambda phi, th, t: 0.5 * ((phi - t["z"]) ** 2).sum(),
)


def scalar_data(seed: int, n: int) -> tuple[NDArray, Tree, float, float]:
    """θ ∈ [0, 1], task (NumPy), and the inner Hessian's spectrum bounds [e^θ, e^θ + σ_max(X)²]."""
    g = rng(seed)
    x = 0.5 * randn(g, n, n) / math.sqrt(n)
    theta = rand(g)
    big = math.exp(float(theta)) + float(np.linalg.norm(x, ord=2)) ** 2
    return theta, {"c": randn(g, n), "X": x, "z": randn(g, n)}, math.exp(float(theta)), big


@pytest.mark.parametrize("kind", UNROLLED_KINDS + IMPLICIT_KINDS)
@settings(max_examples=3)
@given(seed=seeds, n=st.integers(1, 4), steps=st.integers(0, 4), extra=st.integers(0, 2))
def test_zero_dimensional_meta(
    fw: Framework, kind: str, seed: int, n: int, steps: int, extra: int
) -> None:
    theta, task, mu, big = fw.tree(scalar_data(seed, n))
    if kind in IMPLICIT_KINDS:
        strategy: Any = implicit(kind, (mu, big))
        solver = solvers.GradientDescent(
            lr=2 / (mu + big), steps=_steps_for((big - mu) / (big + mu))
        )
    else:
        strategy, k = unrolled_family(kind, steps, extra)
        solver = solvers.GradientDescent(lr=0.3, steps=k)
    report = check_hypergrad(SCALAR, solver, theta, task, strategy)
    assert len(report.analytic) == 1  # one coordinate: the 0-d leaf
    assert hypergrad(SCALAR, solver, theta, task, strategy=strategy).grad.shape == ()


@settings(max_examples=5)
@given(seed=seeds, n=st.integers(1, 4))
def test_first_order_with_black_box_solver(fw: Framework, seed: int, n: int) -> None:
    """FirstOrder's map holds the black-box solution fixed, so its FD check is exact."""
    theta, task, _, _ = fw.tree(init_dependent_data(seed, n))
    check_hypergrad(INIT_DEPENDENT, solvers.Scipy("L-BFGS-B"), theta, task, FirstOrder())


# --------------------------------------------------------------------------- relations


@settings(max_examples=10)
@given(seed=seeds, steps=st.integers(0, 5), extra=st.integers(0, 3), lr=st.floats(0.05, 0.5))
def test_truncated_at_least_k_equals_unrolled(
    fw: Framework, seed: int, steps: int, extra: int, lr: float
) -> None:
    meta, task = fw.tree(mlp_data(seed, 2, 3))
    solver = solvers.GradientDescent(lr=lr, steps=steps)
    full = hypergrad(MAML, solver, meta, task, strategy=Unrolled())
    cut = hypergrad(MAML, solver, meta, task, strategy=Truncated(max(steps, 1) + extra))
    # T ≥ K freezes nothing: the same operations in the same order, so equal to roundoff
    # (in practice bit-identical); 1e-12 relative is the design table's bound.
    assert rel_err(cut.grad, full.grad) <= 1e-12
    assert float(cut.value) == pytest.approx(float(full.value), rel=1e-12)


@settings(max_examples=10)
@given(seed=seeds, steps=st.integers(0, 5), lr=st.floats(0.05, 0.5), momentum=st.floats(0.0, 0.9))
def test_unrolled_equals_forward_mode(
    fw: Framework, seed: int, steps: int, lr: float, momentum: float
) -> None:
    meta, task = fw.tree(mlp_data(seed, 2, 2))
    solver = solvers.GradientDescent(lr=lr, steps=steps, momentum=momentum)
    rev = hypergrad(MAML, solver, meta, task, strategy=Unrolled())
    fwd = hypergrad(MAML, solver, meta, task, strategy=ForwardMode())
    # Forward and reverse mode multiply the same Jacobians in opposite orders: the results
    # differ by float64 roundoff, ~K·u·(product of Jacobian norms) ≲ 1e-14 here; 1e-10 is slack.
    assert rel_err(fwd.grad, rev.grad) <= 1e-10
    assert float(fwd.value) == pytest.approx(float(rev.value), rel=1e-12)


@settings(max_examples=10)
@given(seed=seeds, n=st.integers(1, 4))
def test_first_order_equals_unrolled_without_steps(fw: Framework, seed: int, n: int) -> None:
    # init = 2w and θ in both losses, so the init Jacobian and ∂_θF both matter.
    theta, task, _, _ = fw.tree(init_dependent_data(seed, n))
    solver = solvers.GradientDescent(lr=0.3, steps=0)
    fo = hypergrad(INIT_DEPENDENT, solver, theta, task, strategy=FirstOrder())
    un = hypergrad(INIT_DEPENDENT, solver, theta, task, strategy=Unrolled())
    # K = 0: both are d/dθ F(init(θ), θ) through the same elementary operations; the only
    # difference is how the chain rule is grouped, i.e. a few ulp: 1e-12 relative.
    assert rel_err(fo.grad, un.grad) <= 1e-12


@settings(max_examples=10)
@given(seed=seeds, n=st.integers(2, 5), m=st.integers(1, 3))
def test_implicit_is_the_limit_of_unrolled_on_a_quadratic(
    fw: Framework, seed: int, n: int, m: int
) -> None:
    r"""On the quadratic, with M = I − αA and φ₀ = Pθ:

    dφ_K/dθ = M^K P + (I − M^K) A⁻¹B, while Implicit uses A⁻¹B at the same φ_K, so
    Implicit − Unrolled = −(M^K (P − A⁻¹B))ᵀ ∇_φF(φ_K) exactly, which is O(ρ^K), ρ = ‖M‖ = 1/2.
    """
    meta_np, task_np = quadratic_task(seed, n, m)
    meta, task = fw.tree((meta_np, task_np))
    a, b, p = task_np["A"], task_np["B"], task_np["P"]
    mk = np.eye(n) - QUAD_LR * a
    sens = np.linalg.solve(a, b)
    diffs = []
    for k in (1, 5, 20, 60):
        solver = solvers.GradientDescent(lr=QUAD_LR, steps=k)
        un = hypergrad(QUADRATIC, solver, meta, task, strategy=Unrolled())
        warn = k < 20  # ‖∇f(φ_K)‖ > 1e-4 after few steps: Implicit says it is not exact
        with pytest.warns(StationarityWarning) if warn else contextlib.nullcontext():
            im = hypergrad(QUADRATIC, solver, meta, task, strategy=Implicit(solvers.CG(tol=1e-13)))
        r = task_np["C"] @ numpy(un.params) - task_np["d"]
        gphi = task_np["C"].T @ r
        predicted = -(np.linalg.matrix_power(mk, k) @ (p - sens)).T @ gphi
        gap = flat(im.grad) - flat(un.grad)
        # The identity is exact; both sides carry float64 roundoff of K matrix products with
        # ‖M‖ ≤ 1/2 and a CG solve at tol 1e-13 with κ(A) ≤ 3: 1e-11 of the gradient's scale.
        scale = float(np.linalg.norm(flat(un.grad))) + float(np.linalg.norm(gphi)) * float(
            np.linalg.norm(p - sens)
        )
        assert_close(gap, predicted, rtol=0, atol=1e-11 * scale, what=f"K={k}")
        diffs.append(float(np.linalg.norm(gap)) / scale)
    # The gap closes like ρ^K = 2^{-K}: at K = 60 it is below 2^{-60}·(norms) ≈ 1e-18, i.e. only
    # roundoff is left; 1e-12 of the scale states the limit.
    assert diffs[-1] <= 1e-12
    assert diffs[0] > 1e-6  # not vacuous: after one step the two really differ


# --------------------------------------------------------------------------- negative controls


@settings(max_examples=8)
@given(seed=seeds, n=st.integers(2, 5), m=st.integers(1, 3), steps=st.integers(1, 5))
def test_checker_rejects_first_order_against_unrolled_map(
    fw: Framework, seed: int, n: int, m: int, steps: int
) -> None:
    meta, task = fw.tree(quadratic_task(seed, n, m))
    solver = solvers.GradientDescent(lr=0.5 / HI, steps=steps)
    fo = hypergrad(QUADRATIC, solver, meta, task, strategy=FirstOrder()).grad
    un = hypergrad(QUADRATIC, solver, meta, task, strategy=Unrolled()).grad
    # The two maps really differ here (by (αΣMʲB + (Mᴷ − I)P)ᵀ∇_φF, generically O(1)) ...
    assert rel_err(fo, un) > 1e-3
    # ... each passes against its own map ...
    check_hypergrad(QUADRATIC, solver, meta, task, FirstOrder())
    check_hypergrad(QUADRATIC, solver, meta, task, Unrolled())
    # ... and the checker tells them apart in both directions.
    with pytest.raises(AssertionError, match="disagrees"):
        check_hypergrad(QUADRATIC, solver, meta, task, Mixed(FirstOrder(), Unrolled()))
    with pytest.raises(AssertionError, match="disagrees"):
        check_hypergrad(QUADRATIC, solver, meta, task, Mixed(Unrolled(), FirstOrder()))


@settings(max_examples=8)
@given(seed=seeds, steps=st.integers(2, 5), extra=st.integers(0, 3))
def test_checker_rejects_truncated_against_unrolled_map(
    fw: Framework, seed: int, steps: int, extra: int
) -> None:
    meta, task = fw.tree(quadratic_task(seed, 4, 2))
    solver = solvers.GradientDescent(lr=0.5 / HI, steps=steps)
    t = 1 + extra % (steps - 1)  # T < K: the first K − T steps are frozen
    check_hypergrad(QUADRATIC, solver, meta, task, Truncated(t))
    with pytest.raises(AssertionError, match="disagrees"):
        check_hypergrad(QUADRATIC, solver, meta, task, Mixed(Truncated(t), Unrolled()))
    with pytest.raises(AssertionError, match="disagrees"):
        check_hypergrad(QUADRATIC, solver, meta, task, Mixed(Unrolled(), Truncated(t)))


@settings(max_examples=8)
@given(seed=seeds, n=st.integers(2, 5), m=st.integers(1, 3))
def test_checker_resolves_a_relative_error_of_1e_4(
    fw: Framework, seed: int, n: int, m: int
) -> None:
    """A gradient off by a relative 1e-4 fails; off by 1e-9 passes (the tolerance is 1e-6)."""
    meta, task = fw.tree(quadratic_task(seed, n, m))
    solver = solvers.GradientDescent(lr=0.5 / HI, steps=3)
    check_hypergrad(QUADRATIC, solver, meta, task, Scaled(Unrolled(), 1e-9))
    with pytest.raises(AssertionError, match="disagrees"):
        check_hypergrad(QUADRATIC, solver, meta, task, Scaled(Unrolled(), 1e-4))


@settings(max_examples=5)
@given(seed=seeds, n=st.integers(3, 6), m=st.integers(1, 3))
def test_checker_rejects_an_unconverged_linear_solve(
    fw: Framework, seed: int, n: int, m: int
) -> None:
    meta, task = fw.tree(quadratic_task(seed, n, m))
    solver = solvers.GradientDescent(lr=QUAD_LR, steps=QUAD_IMPLICIT_STEPS)
    # One CG iteration on a generic n ≥ 3 system (the right-hand side ∇_φF is no eigenvector
    # of A) leaves a residual of order one: Implicit warns, and the gradient is wrong by far
    # more than the checker's 1e-6.
    with pytest.warns(LinearSolveWarning), pytest.raises(AssertionError, match="disagrees"):
        check_hypergrad(QUADRATIC, solver, meta, task, Implicit(solvers.CG(maxiter=1)))


@settings(max_examples=5)
@given(seed=seeds, n=st.integers(2, 5), m=st.integers(1, 3), steps=st.integers(1, 4))
def test_checker_rejects_implicit_before_convergence(
    fw: Framework, seed: int, n: int, m: int, steps: int
) -> None:
    """After a few inner steps the implicit formula is not the derivative of the solve map."""
    meta, task = fw.tree(quadratic_task(seed, n, m))
    solver = solvers.GradientDescent(lr=QUAD_LR, steps=steps)
    with pytest.warns(StationarityWarning), pytest.raises(AssertionError, match="disagrees"):
        check_hypergrad(QUADRATIC, solver, meta, task, Implicit(solvers.Direct()))
