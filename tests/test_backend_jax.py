"""The JAX backend: every strategy and solver on ``jax.Array`` meta-parameters, in float64.

One problem family (``_problem``): ``f = ½wᵀ(S + diag λ)w − yᵀw + b·Σtanh²w`` and
``F = ½‖w − z‖² + C‖λ‖² + b·Σtanh w``, written with ``torch`` or ``jax.numpy`` functions.
Three references, each independent of the backend under test:

- **closed forms** (NumPy) at ``b = 0``: the unrolled/truncated hypergradients by propagating the
  tangents ``∂w_k/∂w₀`` and ``∂w_k/∂λ`` through the gradient-descent recursion, the first-order
  one by its definition, the implicit one as ``−(A⁻¹∇F)ᵢ w*ᵢ + 2Cλᵢ`` at ``w* = A⁻¹y``;
- **central finite differences** (:func:`bilevel.testing.check_hypergrad`, unchanged) at b > 0;
- **the same problem written in torch** at ``b > 0``: both backends do the same float64
  arithmetic in different op orders, so they agree to ~1e-15 relative; ``RTOL = 1e-10``
  (relative to the largest entry) is generous and still far below any real mistake.

JAX creates float32 arrays unless ``jax_enable_x64`` is on; the library never sets it, so this
module turns it on for its own tests (and restores it afterwards).

Cost: eager JAX compiles every primitive once per shape, dtype and transformation (vmap, jvp,
linearize) it meets, ~0.1 s each on a small CPU; that one-time warm-up is most of this module's
time (a second identical ``hypergrad`` call takes ~0.2 s instead of ~6 s). Every test therefore
uses the same shapes, and the four cases that mostly add new compilations (a second
``ForwardMode`` chunk size, ``ForwardMode`` and ``Implicit`` on a Batch, float32) are marked
``slow``.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from bilevel import (  # noqa: E402
    Batch,
    FirstOrder,
    ForwardMode,
    Implicit,
    Problem,
    Truncated,
    Unrolled,
    hypergrad,
    solve,
    solvers,
    tree,
)
from bilevel.backends import backend_for  # noqa: E402
from bilevel.testing import check_hypergrad  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::bilevel.BilevelWarning")

RTOL = 1e-10  # cross-backend and closed-form agreement (same float64 arithmetic, other op order)


@pytest.fixture(autouse=True, scope="module")
def _x64() -> Any:
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _to_jax(t: Any) -> Any:
    return tree.map(lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x, t)


def _to_torch(t: Any) -> Any:
    return tree.map(lambda x: torch.tensor(x) if isinstance(x, np.ndarray) else x, t)


def _np(t: Any) -> Any:
    return tree.map(lambda x: np.asarray(x.detach() if isinstance(x, torch.Tensor) else x), t)


def _assert_close(got: Any, want: Any, rtol: float = RTOL, what: str = "") -> None:
    got_flat, want_flat = tree.leaves(_np(got)), tree.leaves(_np(want))
    assert len(got_flat) == len(want_flat), what
    scale = max([float(np.abs(w).max(initial=0.0)) for w in want_flat] + [1e-300])
    for g, w in zip(got_flat, want_flat, strict=True):
        assert g.shape == w.shape, what
        np.testing.assert_allclose(g, w, rtol=0, atol=rtol * max(scale, 1.0), err_msg=what)


# ----------------------------------------------------------------------------------- problem

C = 0.3  # weight of ‖λ‖² in F
N = 3
N_TASKS = 2


def _problem(xp: Any, bend: float) -> Problem:
    """``f = ½wᵀ(S + diag λ)w − yᵀw + bend·Σtanh²w``, ``F = ½‖w − z‖² + C‖λ‖² + bend·Σtanh(w)``.

    Written with one framework's functions (``xp`` is ``torch`` or ``jax.numpy``); ``bend = 0``
    leaves the quadratic problem with closed-form hypergradients, ``bend > 0`` a nonlinear one.
    Every test uses these shapes, so JAX compiles each primitive once for the whole module.
    """

    def inner(w: Any, m: Any, t: Any) -> Any:
        quad = (w * (t["S"] @ w)).sum() / 2 + (m["lam"] * w * w).sum() / 2 - (t["y"] * w).sum()
        return quad + bend * (xp.tanh(w) ** 2).sum()

    def outer(w: Any, m: Any, t: Any) -> Any:
        d = w - t["z"]
        return (d * d).sum() / 2 + C * (m["lam"] * m["lam"]).sum() + bend * xp.tanh(w).sum()

    return Problem(init=lambda m, t: m["w0"] * 1.0, inner_loss=inner, outer_loss=outer)


def _data(n_tasks: int = 0, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Meta-parameters and a task (``n_tasks`` stacked ones for a Batch); the inner Hessian
    ``A = S + diag λ`` has eigenvalues in about [1.1, 1.4]."""
    rng = np.random.default_rng(seed)
    meta = {"w0": rng.standard_normal(N), "lam": 1.0 + 0.05 * rng.standard_normal(N)}

    def one() -> dict[str, Any]:
        b = rng.standard_normal((N, N))
        s = 0.2 * np.eye(N) + 0.03 * (b + b.T)
        return {"S": s, "y": rng.standard_normal(N), "z": rng.standard_normal(N)}

    if not n_tasks:
        return meta, one()
    tasks = [one() for _ in range(n_tasks)]
    return meta, {k: np.stack([t[k] for t in tasks]) for k in tasks[0]}


def _closed_form(kind: str, meta: dict, task: dict, lr: float, k: int, t: int = 0) -> dict:
    """The hypergradient of ``kind`` on the quadratic problem (``bend = 0``), by NumPy."""
    lam, w0 = meta["lam"], meta["w0"]
    a = task["S"] + np.diag(lam)
    if kind == "implicit":
        w = np.linalg.solve(a, task["y"])
        v = np.linalg.solve(a, w - task["z"])  # A is symmetric
        return {"w0": np.zeros(N), "lam": -v * w + 2 * C * lam}
    m = np.eye(N) - lr * a
    w, j_w0, j_lam = w0, np.eye(N), np.zeros((N, N))  # ∂w_k/∂w₀, ∂w_k/∂λ
    for step in range(k):
        if kind == "truncated" and step == max(k - t, 0) and step > 0:
            j_w0, j_lam = np.zeros((N, N)), np.zeros((N, N))  # w_{K−T} held constant
        j_lam = m @ j_lam - lr * np.diag(w)
        j_w0 = m @ j_w0
        w = m @ w + lr * task["y"]
    g = w - task["z"]
    if kind == "first_order":
        return {"w0": g, "lam": 2 * C * lam}
    return {"w0": j_w0.T @ g, "lam": j_lam.T @ g + 2 * C * lam}


def _run(
    strategy: Any, solver: Any, meta: dict, task: Any, *, xp: Any, bend: float, batch: bool = False
) -> Any:
    convert = _to_jax if xp is jnp else _to_torch
    data = convert(task)
    return hypergrad(
        _problem(xp, bend), solver, convert(meta), Batch(data) if batch else data,
        strategy=strategy,
    )  # fmt: skip


def _assert_results_agree(rj: Any, rt: Any, what: str, rtol: float = RTOL) -> None:
    _assert_close(rj.value, rt.value, rtol, what=what + " value")
    _assert_close(rj.grad, rt.grad, rtol, what=what + " grad")
    _assert_close(rj.params, rt.params, rtol, what=what + " params")


def _cross_backend(strategy: Any, solver: Any, batch: bool = False, rtol: float = RTOL) -> Any:
    """The nonlinear problem on JAX and on torch: the results agree; returns the JAX one."""
    meta, task = _data(N_TASKS if batch else 0, seed=1)
    rj = _run(strategy, solver, meta, task, xp=jnp, bend=0.1, batch=batch)
    rt = _run(strategy, solver, meta, task, xp=torch, bend=0.1, batch=batch)
    _assert_results_agree(rj, rt, repr(strategy), rtol)
    return rj


# ------------------------------------------------------------------------------- strategies

LINEAR = {
    "CG": solvers.CG(),
    "Neumann": solvers.Neumann(maxiter=200, alpha=0.8),
    "MINRES": solvers.MINRES(),
    "GMRES": solvers.GMRES(),
    "Direct": solvers.Direct(),
}
UNROLLED_FAMILY: list[Any] = [
    ("unrolled", Unrolled()),
    ("truncated", Truncated(2)),
    ("first_order", FirstOrder()),
    ("unrolled", ForwardMode()),
    # JAX compiles each primitive anew for every vmapped shape: ~7 s more, so not by default
    pytest.param("unrolled", ForwardMode(chunk=2), marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("kind", "strategy"), UNROLLED_FAMILY, ids=lambda x: repr(x))
def test_unrolled_family_closed_form_and_torch(kind: str, strategy: Any) -> None:
    meta, task = _data()
    lr, k = 0.4, 4
    solver = solvers.GradientDescent(lr=lr, steps=k)
    res = _run(strategy, solver, meta, task, xp=jnp, bend=0.0)
    assert backend_for(res.grad).name == "jax"
    assert all(g.dtype == jnp.float64 for g in tree.leaves((res.value, res.grad, res.params)))
    _assert_close(res.grad, _closed_form(kind, meta, task, lr, k, t=2), what=repr(strategy))
    _cross_backend(strategy, solver)


@pytest.mark.parametrize("linear", list(LINEAR))
def test_implicit_closed_form_and_torch(linear: str) -> None:
    meta, task = _data()
    # lr·A has eigenvalues in about [0.9, 1.1]: 16 steps contract the error below 1e-14
    solver, strategy = solvers.GradientDescent(lr=0.8, steps=16), Implicit(LINEAR[linear])
    res = _run(strategy, solver, meta, task, xp=jnp, bend=0.0)
    assert res.info.linear is not None and res.info.linear.converged
    _assert_close(res.grad, _closed_form("implicit", meta, task, 0.0, 0), rtol=1e-9, what=linear)
    other = _cross_backend(strategy, solver)
    assert other.info.linear is not None and other.info.linear.converged


def test_implicit_with_scipy_inner_solver_closed_form_and_torch() -> None:
    meta, task = _data()
    strategy = Implicit(solvers.CG())
    res = _run(strategy, solvers.Scipy(), meta, task, xp=jnp, bend=0.0)
    assert res.info.solver is not None and res.info.solver.success
    assert res.params.dtype == jnp.float64  # the NumPy round trip keeps the dtype
    _assert_close(res.grad, _closed_form("implicit", meta, task, 0.0, 0), rtol=1e-8)
    _cross_backend(strategy, solvers.Scipy(), rtol=1e-8)  # two L-BFGS-B runs, each to ~1e-12
    _cross_backend(FirstOrder(), solvers.Scipy(), rtol=1e-8)


@pytest.mark.parametrize(
    "strategy",
    [Unrolled(), Truncated(1), FirstOrder(), ForwardMode(), Implicit(solvers.CG())],
    ids=lambda s: repr(s),
)
def test_check_hypergrad_runs_unchanged_on_jax(strategy: Any) -> None:
    meta, task = _data(seed=2)
    # Implicit's map is the solution map: Scipy solves it to ~1e-12 (δ/h ≈ 1e-7 on the numeric
    # side, see bilevel.testing), so rtol is loosened for it
    implicit = isinstance(strategy, Implicit)
    solver = solvers.Scipy() if implicit else solvers.GradientDescent(lr=0.8, steps=3)
    check_hypergrad(
        _problem(jnp, 0.1), solver, _to_jax(meta), _to_jax(task), strategy,
        max_coordinates=0, directions=2, rtol=1e-5 if implicit else 1e-6,
    )  # fmt: skip


# ----------------------------------------------------------------------------------- Batch


@pytest.mark.parametrize(
    "strategy",
    [
        Unrolled(),  # reverse mode through the vmapped batch mean
        # vmapped inner solves (as in test_solve_on_a_jax_batch), looped linear solves: ~10 s
        pytest.param(Implicit(solvers.CG()), marks=pytest.mark.slow),
        # vmap of the whole computation, around ForwardMode's own vmap of JVPs: ~14 s more
        pytest.param(ForwardMode(), marks=pytest.mark.slow),
    ],
    ids=lambda s: repr(s),
)
def test_batch_under_jax_equals_torch_and_the_mean_over_tasks(strategy: Any) -> None:
    # 16 steps solve the inner problem for Implicit (0.1¹⁶); fewer suffice for the others
    solver = solvers.GradientDescent(lr=0.8, steps=16 if isinstance(strategy, Implicit) else 4)
    res = _cross_backend(strategy, solver, batch=True)
    assert res.params.shape == (N_TASKS, N) and res.task_values.shape == (N_TASKS,)
    meta, tasks = _data(N_TASKS, seed=1)
    singles = [
        _run(strategy, solver, meta, Batch(tasks).task(i), xp=jnp, bend=0.1) for i in range(N_TASKS)
    ]
    _assert_close(res.grad, tree.scale(0.5, tree.add(singles[0].grad, singles[1].grad)))
    _assert_close(res.value, (singles[0].value + singles[1].value) / 2)


def test_batch_with_non_array_task_leaves_under_jax() -> None:
    """A string and an int in the task are shared by all tasks (closed over by vmap)."""
    meta, tasks = _data(N_TASKS, seed=1)
    base = _problem(jnp, 0.1)
    problem = Problem(
        init=base.init,
        inner_loss=lambda w, m, t: base.inner_loss(w, m, t) * t["scale"],  # type: ignore[misc]
        outer_loss=lambda w, m, t: base.outer_loss(w, m, t) * (1.0 if t["name"] == "F" else 2.0),
    )
    solver = solvers.GradientDescent(lr=0.8, steps=4)
    data = {**_to_jax(tasks), "name": "F", "scale": 1}
    res = hypergrad(problem, solver, _to_jax(meta), Batch(data), strategy=Unrolled())
    plain = _run(Unrolled(), solver, meta, tasks, xp=jnp, bend=0.1, batch=True)
    _assert_close(res.grad, plain.grad)


def test_solve_on_a_jax_batch() -> None:
    meta, tasks = _data(N_TASKS, seed=1)
    solver = solvers.GradientDescent(lr=0.8, steps=4)
    pj = solve(_problem(jnp, 0.1), solver, _to_jax(meta), Batch(_to_jax(tasks)))
    pt = solve(_problem(torch, 0.1), solver, _to_torch(meta), Batch(_to_torch(tasks)))
    assert pj.shape == (N_TASKS, N)
    _assert_close(pj, pt)


# --------------------------------------------------------------------------------- solvers


def test_gradient_descent_with_momentum_under_jax() -> None:
    _cross_backend(Unrolled(), solvers.GradientDescent(lr=0.5, steps=4, momentum=0.5))


def test_optimizer_with_solvers_adam_under_jax() -> None:
    _cross_backend(Unrolled(), solvers.Optimizer(solvers.Adam(lr=0.1), steps=4))
    solver = solvers.Optimizer(solvers.SGD(lr=0.3, momentum=0.5), steps=4)
    assert solver.vectorizable  # the Batch is vmapped through the optimizer state
    _cross_backend(Unrolled(), solver, batch=True)


def test_optimizer_with_an_optax_transform() -> None:
    optax = pytest.importorskip("optax")
    meta, task = _data(seed=1)
    with_optax = _run(
        Unrolled(), solvers.Optimizer(optax.adam(0.1), steps=4), meta, task, xp=jnp, bend=0.1
    )
    with_ours = _run(
        Unrolled(), solvers.Optimizer(solvers.Adam(lr=0.1), steps=4), meta, task, xp=jnp, bend=0.1
    )
    _assert_results_agree(with_optax, with_ours, "optax.adam vs solvers.Adam")
    check_hypergrad(
        _problem(jnp, 0.1), solvers.Optimizer(optax.sgd(0.3, momentum=0.5), steps=3),
        _to_jax(meta), _to_jax(task), Unrolled(), max_coordinates=0, directions=2,
    )  # fmt: skip
    # optax's transformations are pure, so a Batch is vmapped through them: the same result
    solver = solvers.Optimizer(optax.adam(0.1), steps=4)
    assert solver.vectorizable
    metas, tasks = _data(n_tasks=N_TASKS, seed=2)
    batched = _run(Unrolled(), solver, metas, tasks, xp=jnp, bend=0.1, batch=True)
    ours = _run(Unrolled(), solvers.Optimizer(solvers.Adam(0.1), 4), metas, tasks, xp=jnp,
                bend=0.1, batch=True)  # fmt: skip
    _assert_results_agree(batched, ours, "vmapped optax.adam vs solvers.Adam on a Batch")


def _rule(xp: Any) -> Callable[[Any, Any, Any], Any]:
    """A gradient step on the quadratic plus a term that is no gradient (a non-symmetric
    fixed-point Jacobian); a contraction, so it has a fixed point."""
    return lambda w, m, t: -0.5 * (t["S"] @ w + m["lam"] * w - t["y"]) + 0.05 * m["w0"] * xp.tanh(w)


@pytest.mark.parametrize(
    "strategy",
    [Unrolled(), Implicit(solvers.GMRES()), Implicit(solvers.Neumann(maxiter=200))],
    ids=lambda s: repr(s),
)
def test_update_rule_under_jax_equals_torch(strategy: Any) -> None:
    meta, task = _data(seed=1)
    steps = 40 if isinstance(strategy, Implicit) else 4  # 0.45⁴⁰ < 1e-13: at the fixed point
    results = []
    for xp, convert in ((jnp, _to_jax), (torch, _to_torch)):
        # no inner loss: Implicit differentiates the rule's fixed point
        problem = Problem(init=lambda m, t: m["w0"] * 1.0, outer_loss=_problem(xp, 0.1).outer_loss)
        solver = solvers.UpdateRule(_rule(xp), steps)
        results.append(hypergrad(problem, solver, convert(meta), convert(task), strategy=strategy))
    _assert_results_agree(*results, what=repr(strategy))


# ------------------------------------------------------------------- backend selection, seam


def test_backend_for_picks_jax_from_the_leaves() -> None:
    from bilevel.backends import JaxBackend

    backend = backend_for({"w": jnp.zeros(2)}, {"x": jnp.ones(3), "k": 3, "name": "a"})
    assert backend == JaxBackend() and backend.name == "jax"
    seen: list[str] = []

    def traced(x: Any) -> Any:
        seen.append(backend_for(x).name)  # tracers are jax.Arrays too
        return x

    jax.vmap(traced)(jnp.ones((2, 3)))
    jax.grad(lambda x: traced(x).sum())(jnp.ones(3))
    assert seen == ["jax", "jax"]


@pytest.mark.parametrize("where", ["meta", "task"])
def test_mixing_torch_and_jax_leaves_is_a_type_error(where: str) -> None:
    meta, task = _data()
    meta_j, task_j = _to_jax(meta), _to_jax(task)
    if where == "meta":
        meta_j["lam"] = torch.tensor(meta["lam"])
    else:
        task_j["y"] = torch.tensor(task["y"])
    with pytest.raises(TypeError, match=r"more than one framework") as err:
        hypergrad(
            _problem(jnp, 0.0), solvers.GradientDescent(lr=0.4, steps=2), meta_j, task_j,
            strategy=Unrolled(),
        )  # fmt: skip
    message = str(err.value)
    assert "torch" in message and "jax" in message and "leaf" in message


def test_importing_bilevel_and_the_jax_backend_changes_nothing_global() -> None:
    code = (
        "import sys, bilevel\nfrom bilevel import solvers\n"
        "assert 'jax' not in sys.modules and 'torch' not in sys.modules\n"
        "import jax\n"
        "from bilevel.backends import JaxBackend\n"
        "print(jax.config.jax_enable_x64, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_without_jax_bilevel_imports_and_asking_for_the_backend_says_how_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['jax'] = None  # as if JAX were not installed\n"
        "import bilevel\nfrom bilevel import solvers\n"
        "try:\n"
        "    from bilevel.backends import JaxBackend\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'bilevel[jax]'" in out.stdout


def test_jax_backend_primitives() -> None:
    from bilevel.backends import JaxBackend

    b = JaxBackend()
    # ravel keeps each leaf's dtype and shape on the way back (jax.vjp needs exact dtypes)
    t = {"a": jnp.ones((2, 2), dtype=jnp.float32), "b": [jnp.arange(3.0), None]}
    vec, unravel = b.ravel(t)
    assert vec.shape == (7,)
    back = unravel(vec * 2)
    assert back["a"].dtype == jnp.float32 and back["b"][0].dtype == jnp.float64
    assert back["b"][1] is None and back["a"].shape == (2, 2)
    empty, unravel_empty = b.ravel({})
    assert empty.shape == (0,) and unravel_empty(empty) == {}
    # dtypes follow `like`
    like32 = jnp.zeros(2, dtype=jnp.float32)
    assert b.scalar(0.5, like32).dtype == jnp.float32
    assert b.from_numpy(np.ones(2), like=like32).dtype == jnp.float32
    assert b.to_numpy(like32).dtype == np.float64
    # jvp with aux, value_and_grad with argnums and aux, a reusable vjp
    out, tangent, aux = b.jvp(lambda x: (x**2, "aux"), (jnp.array(3.0),), (jnp.array(1.0),), True)
    assert (float(out), float(tangent), aux) == (9.0, 6.0, "aux")
    (value, aux), (gx, gy) = b.value_and_grad(
        lambda x, y: ((x * y).sum(), {"p": x}), argnums=(0, 1), has_aux=True
    )(jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]))
    assert float(value) == 11.0 and gx.tolist() == [3.0, 4.0] and gy.tolist() == [1.0, 2.0]
    _, pullback = b.vjp(lambda x, y: x * y, jnp.array(2.0), jnp.array(5.0))
    assert isinstance(pullback(jnp.array(1.0)), tuple)
    assert [float(g) for g in pullback(jnp.array(2.0))] == [10.0, 4.0]
    # vmap: None in_dims share a leaf; non-array leaves are closed over; dict prefixes work
    f = b.vmap(
        lambda m, d: m["s"] * d["x"] + d["k"], in_dims=({"s": None}, {"x": 0, "k": None, "n": None})
    )
    got = f({"s": jnp.array(2.0)}, {"x": jnp.arange(3.0), "k": 1, "n": "name"})
    assert got.tolist() == [1.0, 3.0, 5.0]
    # all_finite and where
    assert bool(b.all_finite({"a": jnp.ones(2), "b": None}))
    assert not bool(b.all_finite([jnp.array([1.0, jnp.nan])]))
    assert bool(b.all_finite({}))
    assert b.where(jnp.array(True), jnp.array(1.0), jnp.array(2.0)) == 1.0
    # a singular dense system raises like torch's, and Direct reports it
    with pytest.raises(RuntimeError, match="singular"):
        b.dense_solve(jnp.zeros((2, 2)), jnp.ones(2))
    assert b.eigvalsh(jnp.diag(jnp.array([3.0, -1.0]))).tolist() == [-1.0, 3.0]
    assert not b.is_differentiable(jnp.arange(3)) and b.is_differentiable(jnp.ones(1))
    assert b.untape(t) is t


@pytest.mark.slow  # compiles every primitive again for float32: ~5 s
def test_float32_stays_float32() -> None:
    meta, task = _data()
    f32 = lambda t: tree.map(lambda x: jnp.asarray(x, dtype=jnp.float32), t)  # noqa: E731
    res = hypergrad(
        _problem(jnp, 0.1), solvers.GradientDescent(lr=0.8, steps=1), f32(meta), f32(task),
        strategy=FirstOrder(),
    )  # fmt: skip
    assert all(x.dtype == jnp.float32 for x in tree.leaves((res.value, res.grad, res.params)))


def test_non_finite_inner_loop_is_located_under_jax() -> None:
    meta, task = _data()
    with pytest.raises(RuntimeError, match="step"):
        hypergrad(
            _problem(jnp, 0.0), solvers.GradientDescent(lr=1e200, steps=4), _to_jax(meta),
            _to_jax(task), strategy=Unrolled(),
        )  # fmt: skip


# ------------------------------------------------------------------------------------- jit


def _counting_problem() -> tuple[Problem, list[int]]:
    traces = [0]

    def inner(w: Any, m: Any, t: Any) -> Any:
        traces[0] += 1  # a Python side effect: runs once per trace (and per eager call)
        return ((w - m) ** 2).sum() + (t * w * w).sum()

    problem = Problem(
        init=lambda m, t: m * 1.0, inner_loss=inner, outer_loss=lambda w, m, t: (w**2).sum()
    )
    return problem, traces


def test_eager_calls_run_the_loss_every_time_nothing_is_compiled_behind_the_caller() -> None:
    """No hidden cache: each eager ``hypergrad`` call runs the inner loss's Python body once per
    inner step and strategy pass, the same count every call (before: the body ran once, at the
    trace of a per-loss ``jax.jit``, and never again: counts 1, 0, 0)."""
    problem, traces = _counting_problem()
    gd = solvers.GradientDescent(lr=0.1, steps=3)
    counts = []
    for _ in range(3):
        before = traces[0]
        hypergrad(problem, gd, jnp.arange(3.0), jnp.ones(3), strategy=Unrolled())
        counts.append(traces[0] - before)
    assert counts[0] >= 3 and counts == [counts[0]] * 3, counts


def test_an_inner_loss_jit_cannot_trace_runs_with_the_same_hypergradient() -> None:
    """A Python ``if`` on a task value cannot be traced by ``jax.jit``; eager ``hypergrad``
    never traces, so it runs with the same hypergradient as the plain loss (agreement to
    RTOL)."""
    meta, task = _data(seed=2)
    plain = _problem(jnp, 0.1)

    def branching(w: Any, m: Any, t: Any) -> Any:
        if float(t["y"][0]) > -1e9:  # always true; needs the concrete value
            return plain.inner_loss(w, m, t)
        return (w * w).sum()

    problem = Problem(init=plain.init, inner_loss=branching, outer_loss=plain.outer_loss)
    gd = solvers.GradientDescent(lr=0.8, steps=6)
    m, t = _to_jax(meta), _to_jax(task)
    for strategy in (Unrolled(), Implicit(solvers.CG(30, tol=1e-13))):
        want = hypergrad(plain, gd, m, t, strategy=strategy)
        got = hypergrad(problem, gd, m, t, strategy=strategy)
        _assert_results_agree(got, want, f"eager fallback, {strategy!r}")


def test_the_inner_loop_and_the_unrolled_map_compile_with_jit() -> None:
    """What traces today: ``solve`` and a strategy's own ``compute`` (no host checks)."""
    from bilevel.backends import JaxBackend

    meta, task = _data(seed=1)
    problem, solver = _problem(jnp, 0.1), solvers.GradientDescent(lr=0.8, steps=4)
    meta_j, task_j = _to_jax(meta), _to_jax(task)
    compiled = jax.jit(lambda m, t: Unrolled().compute(problem, solver, m, t, JaxBackend()))
    out = compiled(meta_j, task_j)
    eager = hypergrad(problem, solver, meta_j, task_j, strategy=Unrolled())
    _assert_close(out.grad, eager.grad)
    _assert_close(out.value, eager.value)
    params = jax.jit(lambda m, t: solve(problem, solver, m, Batch(t)))(
        meta_j, _to_jax(_data(N_TASKS, seed=1)[1])
    )
    assert params.shape == (N_TASKS, N)


def test_hypergrad_under_jit_equals_eager() -> None:
    """The finiteness checks are skipped while traced (Backend.host_bool is None), so jax.jit
    compiles hypergrad; the compiled and eager hypergradients are the same computation
    (measured difference ≤ 3e-15; asserted 1e-12)."""
    meta, task = _data(seed=1)
    problem, solver = _problem(jnp, 0.1), solvers.GradientDescent(lr=0.8, steps=4)
    m, t = _to_jax(meta), _to_jax(task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jitted = jax.jit(lambda m, t: hypergrad(problem, solver, m, t, strategy=Unrolled()).grad)(
            m, t
        )
        eager = hypergrad(problem, solver, m, t, strategy=Unrolled()).grad
    for a, b in zip(
        jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


def test_trainer_fit_under_jax_with_solvers_adam_and_optax() -> None:
    """fit is backend-neutral: on JAX arrays it equals the hand-written outer loop, and an optax
    transformation as the outer optimizer equals solvers.Adam (same formula, 1e-10)."""
    from bilevel.recipes import Config
    from bilevel.trainer import fit

    metas, tasks = _data(n_tasks=N_TASKS, seed=3)
    cfg = Config(_problem(jnp, 0.1), solvers.GradientDescent(lr=0.5, steps=2), Unrolled())
    meta, batch = _to_jax(metas), Batch(_to_jax(tasks))
    out = fit(cfg, meta, lambda s: batch, optimizer=solvers.Adam(0.05), steps=5, progress=False)
    m, state = meta, solvers.Adam(0.05).init(meta)
    for _ in range(5):
        g = hypergrad(cfg.problem, cfg.solver, m, batch, strategy=cfg.strategy).grad
        updates, state = solvers.Adam(0.05).update(g, state, m)
        m = {k: m[k] + updates[k] for k in m}
    _assert_close(out.meta, m, what="fit vs the hand-written loop")
    _, losses = out.history.series("outer_loss")
    assert losses[-1] < losses[0]
    optax = pytest.importorskip("optax")
    other = fit(cfg, meta, lambda s: batch, optimizer=optax.adam(0.05), steps=5, progress=False)
    _assert_close(other.meta, m, what="fit with optax.adam vs solvers.Adam")
