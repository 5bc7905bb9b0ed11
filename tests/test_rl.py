"""bilevel.rl: returns against hand-computed numbers, their identities, broadcasting, gradients
with respect to γ and λ against float64 finite differences, and vmap over episodes.

Every test runs on torch and on JAX (the ``fw`` fixture, ``tests/_frameworks.py``): episodes are
drawn in NumPy, so both runs see the same numbers; the meta-problems are written once (array
functions from :func:`xp`) and built once at module level, so that JAX compiles each inner loss
once; gradients and ``vmap`` go through the backend's own transforms (``backend_for(x)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _frameworks import Framework, numpy, sigmoid, xp
from _generators import rand, randn, rng
from hypothesis import given
from hypothesis import strategies as st

from bilevel import Batch, ForwardMode, Problem, Unrolled, hypergrad, solvers
from bilevel.backends import backend_for
from bilevel.rl import discounted_returns, lambda_returns, n_step_returns
from bilevel.testing import check_hypergrad

F64 = np.float64
Array = np.ndarray[Any, Any]


def a64(*xs: float) -> Array:
    return np.asarray(xs, dtype=F64)


# A 3-step segment used throughout: R_1, R_2, R_3 = 1, 2, 3 and v(S_0 … S_3) = 10, 20, 30, 40.
R = a64(1.0, 2.0, 3.0)
V = a64(10.0, 20.0, 30.0, 40.0)


def close(a: Any, b: Any, tol: float = 1e-12) -> bool:
    return bool(np.allclose(numpy(a), numpy(b), atol=tol, rtol=tol))


def random_episode(seed: int, t: int) -> tuple[Array, Array, Array, Array]:
    """Rewards (T,), values (T + 1,), γ (T,) and λ (T,) in [0, 1), as float64 NumPy arrays."""
    g = rng(seed)
    return randn(g, t), randn(g, t + 1), rand(g, t), rand(g, t)


# --------------------------------------------------------------------------- hand-computed numbers
def test_discounted_returns_by_hand(fw: Framework) -> None:
    r, a = fw.array(R), fw.array
    # γ = 0.5: G_2 = 3, G_1 = 2 + 0.5·3 = 3.5, G_0 = 1 + 0.5·3.5 = 2.75
    assert close(discounted_returns(r, 0.5), [2.75, 3.5, 3.0])
    # bootstrap G_3 = 4: G_2 = 3 + 2 = 5, G_1 = 2 + 2.5 = 4.5, G_0 = 1 + 2.25 = 3.25
    assert close(discounted_returns(r, 0.5, bootstrap=4.0), [3.25, 4.5, 5.0])
    # per transition γ = (0.5, 0, 1), G_3 = 4: G_2 = 3 + 4 = 7, G_1 = 2 + 0·7 = 2, G_0 = 1 + 1 = 2
    got = discounted_returns(r, a(a64(0.5, 0.0, 1.0)), bootstrap=a(a64(4.0))[0])
    assert close(got, [2.0, 2.0, 7.0])


def test_n_step_returns_by_hand(fw: Framework) -> None:
    r, v = fw.array(R), fw.array(V)
    # n = 1: R_{t+1} + 0.5 v(S_{t+1}) = 1 + 10, 2 + 15, 3 + 20
    assert close(n_step_returns(r, v, 0.5, 1), [11.0, 17.0, 23.0])
    # n = 2: G_{0:2} = 1 + 0.5·2 + 0.25·30 = 9.5, G_{1:3} = 2 + 0.5·3 + 0.25·40 = 13.5,
    # G_{2:3} (cut at T = 3) = 3 + 0.5·40 = 23
    assert close(n_step_returns(r, v, 0.5, 2), [9.5, 13.5, 23.0])
    # n = 2, γ = (1, 0.5, 0): G_{0:2} = 1 + 2 + 0.5·30 = 18, G_{1:3} = 2 + 0.5·3 + 0 = 3.5,
    # G_{2:3} = 3 + 0·40 = 3
    assert close(n_step_returns(r, v, fw.array(a64(1.0, 0.5, 0.0)), 2), [18.0, 3.5, 3.0])


def test_lambda_returns_by_hand(fw: Framework) -> None:
    r, v, a = fw.array(R), fw.array(V), fw.array
    # γ = λ = 0.5, g_3 = v(S_3) = 40:
    # g_2 = 3 + 0.5·(0.5·40 + 0.5·40) = 23
    # g_1 = 2 + 0.5·(0.5·30 + 0.5·23) = 15.25
    # g_0 = 1 + 0.5·(0.5·20 + 0.5·15.25) = 9.8125
    assert close(lambda_returns(r, v, 0.5, 0.5), [9.8125, 15.25, 23.0])
    # the same from S&B eq. 12.3 for g_0: (1 − λ)(G_{0:1} + λ G_{0:2}) + λ² G_{0:3}
    # with G_{0:1} = 11, G_{0:2} = 9.5, G_{0:3} = 1 + 1 + 0.75 + 0.125·40 = 7.75
    assert 0.5 * (11 + 0.5 * 9.5) + 0.25 * 7.75 == 9.8125
    # per transition γ = (1, 0.5, 0), λ = (0, 1, 0.5): g_2 = 3, g_1 = 2 + 0.5·3 = 3.5,
    # g_0 = 1 + 1·(1·20 + 0·3.5) = 21
    got = lambda_returns(r, v, a(a64(1.0, 0.5, 0.0)), a(a64(0.0, 1.0, 0.5)))
    assert close(got, [21.0, 3.5, 3.0])


# --------------------------------------------------------------------------- identities
@pytest.mark.parametrize("seed", range(4))
def test_identities(fw: Framework, seed: int) -> None:
    t = 7
    episode = random_episode(seed, t)
    rewards, values, gamma, lam = (fw.array(x) for x in episode)
    mc = discounted_returns(rewards, gamma, bootstrap=values[-1])
    td = rewards + gamma * values[1:]
    assert close(lambda_returns(rewards, values, gamma, 1.0), mc)  # λ = 1: Monte Carlo
    assert close(lambda_returns(rewards, values, gamma, 0.0), td)  # λ = 0: one-step TD targets
    assert close(n_step_returns(rewards, values, gamma, 1), td)  # n = 1: TD
    for n in (t, t + 1, 100):  # n ≥ T: Monte Carlo
        assert close(n_step_returns(rewards, values, gamma, n), mc)
    for fn in (  # γ = 0: immediate rewards, whatever λ, n and the bootstrap
        lambda g: discounted_returns(rewards, g, bootstrap=values[-1]),
        lambda g: n_step_returns(rewards, values, g, 3),
        lambda g: lambda_returns(rewards, values, g, lam),
    ):
        assert close(fn(0.0), rewards)
        assert close(fn(fw.array(np.zeros(t))), rewards)
    # discounted returns with no discount: reversed cumulative sums
    assert close(discounted_returns(rewards, 1.0), np.cumsum(episode[0][::-1])[::-1])


@given(
    t=st.integers(1, 8),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_lambda_return_is_the_weighted_average_of_n_step_returns(
    fw: Framework, t: int, gamma: float, lam: float, seed: int
) -> None:
    """S&B eq. 12.3, episodic: g_t = (1−λ) Σ_{n=1}^{T−t−1} λ^{n−1} G_{t:t+n} + λ^{T−t−1} G_{t:T}."""
    rewards, values, _, _ = (fw.array(x) for x in random_episode(seed, t))
    g = numpy(lambda_returns(rewards, values, gamma, lam))
    n_step = {n: numpy(n_step_returns(rewards, values, gamma, n)) for n in range(1, t + 1)}
    for i in range(t):
        left = t - i
        expected = sum((1 - lam) * lam ** (n - 1) * n_step[n][i] for n in range(1, left))
        expected = expected + lam ** (left - 1) * n_step[left][i]
        assert close(g[i], expected, 1e-10)


def test_terminal_inside_the_segment_is_a_zero_discount(fw: Framework) -> None:
    # Two episodes back to back, (1, 2) then (3,): γ = 0 on the transition entering the terminal.
    r, v = fw.array(R), fw.array(V)
    gamma = fw.array(a64(0.9, 0.0, 0.9))
    assert close(discounted_returns(r, gamma), [1 + 0.9 * 2, 2.0, 3.0])
    assert close(lambda_returns(r, v, gamma, 0.7)[1], 2.0)


# --------------------------------------------------------------------------- broadcasting
@pytest.mark.parametrize("fn", ["discounted", "n_step", "lambda"])
def test_scalar_and_per_transition_forms_agree(fw: Framework, fn: str) -> None:
    rewards, values, _, _ = (fw.array(x) for x in random_episode(0, 6))

    def call(gamma: Any, lam: Any, **kw: Any) -> Any:
        if fn == "discounted":
            return discounted_returns(rewards, gamma, bootstrap=values[-1], **kw)
        if fn == "n_step":
            return n_step_returns(rewards, values, gamma, 2, **kw)
        return lambda_returns(rewards, values, gamma, lam, **kw)

    ref = call(0.8, 0.6)
    assert close(call(fw.array(np.float64(0.8)), fw.array(np.float64(0.6))), ref)
    assert close(call(fw.array(np.full(6, 0.8)), 0.6), ref)
    assert close(call(0.8, fw.array(np.full(6, 0.6))), ref)
    # per-state tables: γ_t = table[S_{t+1}], with the states S_0 … S_6 = 0, 1, 2, 0, 1, 2, 0
    states_np = np.array([0, 1, 2, 0, 1, 2, 0], dtype=np.int64)
    states = fw.array(states_np)
    g_np, l_np = a64(0.3, 0.9, 0.6), a64(0.2, 0.5, 1.0)
    per_state = call(fw.array(g_np), fw.array(l_np), states=states)
    assert close(per_state, call(fw.array(g_np[states_np[1:]]), fw.array(l_np[states_np[1:]])))
    assert close(call(0.8, 0.6, states=states), ref)  # numbers stay numbers with states


def test_output_dtype_follows_the_rewards(fw: Framework) -> None:
    r32, v32 = fw.array(R.astype(np.float32)), fw.array(V.astype(np.float32))
    assert numpy(discounted_returns(r32, 0.9)).dtype == np.float32
    assert numpy(lambda_returns(r32, v32, 0.9, 0.5)).dtype == np.float32
    assert numpy(n_step_returns(r32, v32, 0.9, 2)).shape == (3,)
    assert numpy(discounted_returns(fw.array(a64(5.0)), 0.9)).tolist() == [5.0]  # T = 1


# --------------------------------------------------------------------------- gradients
def check_jacobian(fn: Callable[..., Any], args: list[Any], step: float = 1e-6) -> None:
    """``fn``'s Jacobian in every argument, by the backend's forward mode (jvp, one column per
    input entry) and reverse mode (vjp, one row per output entry), against float64 central
    differences: what ``torch.autograd.gradcheck`` checks, on either framework.

    The tolerances are gradcheck's defaults (eps = 1e-6, atol = 1e-5, rtol = 1e-3): the
    functions here are polynomials of degree ≤ 2·T in the entries, of size O(10), so the
    truncation error h²/6·|f'''| ≲ 1e-9 and the cancellation error u·|f|/h ≲ 1e-9. ``fn`` is
    evaluated through ``backend.compiled`` (``jax.jit`` on JAX, ``fn`` itself on torch): one
    compilation instead of an eager dispatch per operation keeps the ~100 calls cheap on JAX.
    """
    backend = backend_for(*args)
    f = backend.compiled(fn)
    base = [numpy(x) for x in args]

    def arrays(j: int, d: Array, zeros: bool = False) -> tuple[Any, ...]:
        """The arguments with ``d`` added to argument j (or ``d`` there, zeros elsewhere)."""
        return tuple(
            backend.from_numpy(
                (d if zeros else b + d) if m == j else (np.zeros_like(b) if zeros else b), args[m]
            )
            for m, b in enumerate(base)
        )

    out, pullback = backend.vjp(f, *args)
    shape = numpy(out).shape
    # reverse mode: row k of every argument's Jacobian from the cotangent e_k
    rows = [
        [numpy(c).reshape(-1) for c in pullback(backend.from_numpy(e.reshape(shape), out))]
        for e in np.eye(int(np.prod(shape)))
    ]
    for j, x in enumerate(base):
        for i, e in enumerate(np.eye(x.size)):
            d = e.reshape(x.shape)
            plus, minus = numpy(f(*arrays(j, step * d))), numpy(f(*arrays(j, -step * d)))
            numeric = (plus - minus) / (2 * step)
            forward = numpy(backend.jvp(f, tuple(args), arrays(j, d, zeros=True))[1])
            reverse = np.array([row[j][i] for row in rows]).reshape(shape)
            what = f"d out / d arg {j}[{i}]"
            np.testing.assert_allclose(forward, numeric, rtol=1e-3, atol=1e-5, err_msg=what)
            np.testing.assert_allclose(reverse, numeric, rtol=1e-3, atol=1e-5, err_msg=what)


def test_jacobians_with_respect_to_gamma_lambda_values_and_rewards(fw: Framework) -> None:
    # Formerly torch.autograd.gradcheck (torch only); the same check, written once.
    episode = random_episode(1, 5)
    args = [fw.array(x) for x in episode]
    rewards, values = args[0], args[1]
    table = fw.array(a64(0.3, 0.8))
    states = fw.array(np.array([0, 1, 1, 0, 1, 0], dtype=np.int64))
    check_jacobian(lambda r, v, g, lm: lambda_returns(r, v, g, lm), args)
    check_jacobian(lambda r, v, g, _: n_step_returns(r, v, g, 3), args)
    check_jacobian(lambda r, v, g, _: discounted_returns(r, g, bootstrap=v[-1]), args)
    check_jacobian(
        lambda tb: lambda_returns(rewards, values, tb, xp(tb).flip(tb, (0,)), states=states),
        [table],
    )


def _meta_problem(which: str) -> Problem:
    """Gradient steps of a one-hot value function w towards a return with γ = σ(η_γ) and
    λ = σ(η_λ), bootstrapping from a fixed critic ``task["v"]``; the outer loss is the squared
    error to the Monte-Carlo return of a fresh episode.

    The bootstrap values come from the task, not from w: ``.detach()`` (or the backend's
    ``stop_gradient``) inside the inner loss would cut the outer derivative too.
    """

    def returns(meta: dict[str, Any], task: dict[str, Any]) -> Any:
        gamma, lam = sigmoid(meta["eta_gamma"]), sigmoid(meta["eta_lam"])
        if which == "lambda":
            return lambda_returns(task["rewards"], task["v"], gamma, lam)
        if which == "n_step":  # per-state γ table, indexed by the task's states
            return n_step_returns(task["rewards"], task["v"], gamma, 2, states=task["s"])
        return discounted_returns(task["rewards"], gamma * lam, bootstrap=task["v"][-1])

    def inner(w: Any, meta: Any, task: Any) -> Any:
        return ((returns(meta, task) - w) ** 2).sum()

    def outer(w: Any, meta: Any, task: Any) -> Any:
        return ((discounted_returns(task["fresh"], 1.0) - w) ** 2).sum()

    return Problem(init=lambda meta, task: task["w0"], inner_loss=inner, outer_loss=outer)


# Built once: JAX compiles an inner loss once per function object (and shape).
META_PROBLEMS = {which: _meta_problem(which) for which in ("lambda", "n_step", "discounted")}


@pytest.mark.parametrize("which", ["lambda", "n_step", "discounted"])
@pytest.mark.parametrize("strategy", [Unrolled(), ForwardMode()], ids=repr)
def test_hypergradient_through_returns_matches_finite_differences(
    fw: Framework, which: str, strategy: Any
) -> None:
    t = 5
    g = rng(3)
    task = fw.tree(
        {
            "rewards": randn(g, t),
            "fresh": randn(g, t),
            "w0": randn(g, t),
            "v": randn(g, t + 1),
            "s": np.array([0, 1, 2, 3, 4, 0], dtype=np.int64),
        }
    )
    meta = fw.tree({"eta_gamma": randn(g, t), "eta_lam": randn(g, t)})
    solver = solvers.GradientDescent(lr=0.2, steps=3)
    problem = META_PROBLEMS[which]
    report = check_hypergrad(problem, solver, meta, task, strategy)
    assert report.worst <= 1
    grads = numpy(hypergrad(problem, solver, meta, task, strategy=strategy).grad)
    assert float(np.abs(grads["eta_gamma"]).sum()) > 0  # γ really is differentiated
    if which != "n_step":
        assert float(np.abs(grads["eta_lam"]).sum()) > 0


def test_hypergradient_over_a_batch_of_episodes_is_vectorised(fw: Framework) -> None:
    g = rng(4)
    n, t = 3, 4
    tasks = fw.tree(
        {
            "rewards": randn(g, n, t),
            "fresh": randn(g, n, t),
            "w0": np.zeros((n, t)),
            "v": randn(g, n, t + 1),
            "s": np.zeros((n, t + 1), dtype=np.int64),
        }
    )
    meta = fw.tree({"eta_gamma": np.zeros(t), "eta_lam": np.zeros(t)})
    problem, solver = META_PROBLEMS["lambda"], solvers.GradientDescent(lr=0.5, steps=1)
    batched = hypergrad(problem, solver, meta, Batch(tasks), strategy=Unrolled())
    looped = [
        hypergrad(problem, solver, meta, Batch(tasks).task(i), strategy=Unrolled()).grad
        for i in range(n)
    ]
    mean = np.stack([numpy(x["eta_gamma"]) for x in looped]).mean(0)
    assert close(batched.grad["eta_gamma"], mean)


# --------------------------------------------------------------------------- vmap and grad
def test_vmap_over_a_batch_of_episodes_matches_a_loop(fw: Framework) -> None:
    # The backend's transforms: torch.func.vmap / grad on torch, jax.vmap / grad on JAX.
    n, t = 6, 5
    episodes = [tuple(fw.array(x) for x in random_episode(s, t)) for s in range(n)]
    rewards, values, gamma, lam = (
        fw.array(np.stack([numpy(e[k]) for e in episodes])) for k in range(4)
    )
    backend = backend_for(rewards)
    vmap = backend.vmap
    out = vmap(lambda_returns, (0, 0, 0, 0))(rewards, values, gamma, lam)
    loop = np.stack([numpy(lambda_returns(*e)) for e in episodes])
    assert close(out, loop)
    # shared scalar γ, per-episode λ; and per-episode gradients with respect to γ
    out = vmap(lambda r, v, lm: n_step_returns(r, v, 0.9, 2) + lm, (0, 0, 0))(rewards, values, lam)
    assert numpy(out).shape == (n, t)

    def loss(g: Any, r: Any, v: Any, lm: Any) -> Any:
        return lambda_returns(r, v, g, lm).sum()

    def grad(g: Any, r: Any, v: Any, lm: Any) -> Any:
        return backend.value_and_grad(loss)(g, r, v, lm)[1]

    per_episode = vmap(grad, (0, 0, 0, 0))(gamma, rewards, values, lam)
    for i, (r, v, g, lm) in enumerate(episodes):
        assert close(numpy(per_episode)[i], grad(g, r, v, lm))
    # per-state tables shared across the batch, states batched
    states_np = rng(0).integers(0, 3, (n, t + 1))
    states = fw.array(states_np)
    table_np = a64(0.2, 0.7, 0.95)
    table = fw.array(table_np)
    out = vmap(lambda r, s: discounted_returns(r, table, states=s), (0, 0))(rewards, states)
    loop = np.stack(
        [
            numpy(discounted_returns(episodes[i][0], fw.array(table_np[states_np[i, 1:]])))
            for i in range(n)
        ]
    )
    assert close(out, loop)


# --------------------------------------------------------------------------- errors
# Each call takes ``a`` = fw.array and builds its arrays from NumPy, so it runs on both.
Call = Callable[[Callable[[Any], Any]], Any]
ERRORS: list[tuple[Call, type, str]] = [
    (lambda a: discounted_returns([1.0, 2.0], 0.9), TypeError, "discounted_returns: rewards"),
    (lambda a: discounted_returns(R, 0.9), TypeError, "discounted_returns: found no"),
    (lambda a: discounted_returns(a(np.zeros((2, 3))), 0.9), ValueError, r"shape \(T,\)"),
    (lambda a: discounted_returns(a(np.zeros(0)), 0.9), ValueError, "T >= 1"),
    (lambda a: discounted_returns(a(R), 1.5), ValueError, r"gamma=1\.5 must lie in \[0, 1\]"),
    (lambda a: discounted_returns(a(R), a(a64(0.9, 0.9))), ValueError, r"shape \(2,\).*T = 3"),
    (lambda a: discounted_returns(a(R), "0.9"), TypeError, "gamma must be"),
    (lambda a: discounted_returns(a(R), 0.9, bootstrap=a(V)), ValueError, "bootstrap=values"),
    (lambda a: n_step_returns(a(R), a(V), 0.9, 0), ValueError, "n_step_returns: n=0"),
    (lambda a: n_step_returns(a(R), a(V), 0.9, 2.0), TypeError, "n must be an int"),
    (
        lambda a: n_step_returns(a(R), a(V[:3]), 0.9, 2),
        ValueError,
        r"values must have shape \(4,\)",
    ),
    (lambda a: lambda_returns(a(R), a(V), 0.9, -0.1), ValueError, "lambda_returns: lam=-0.1"),
    (lambda a: lambda_returns(a(R), a(V), 0.9, a(a64(1.0))), ValueError, "lam has shape"),
    (
        lambda a: lambda_returns(
            a(R), a(V), a(a64(0.5, 0.9)), 0.5, states=a(np.array([0, 1, 0], dtype=np.int64))
        ),
        ValueError,
        r"states must be an integer array of shape \(4,\)",
    ),
    (
        lambda a: lambda_returns(a(R), a(V), a(a64(0.5, 0.9)), 0.5, states=a(a64(0, 1, 0, 1))),
        ValueError,
        r"dtype (torch\.)?float64",  # torch.float64 / float64 (JAX)
    ),
    (  # S_2 = 2 is outside a 2-state table: JAX would clamp it to state 1 without a word
        lambda a: discounted_returns(
            a(R), a(a64(0.5, 0.9)), states=a(np.array([0, 1, 2, 1], dtype=np.int64))
        ),
        ValueError,
        r"states must index the gamma table of 2 entries.*outside 0 … 1",
    ),
]


@pytest.mark.parametrize(("call", "error", "match"), ERRORS)
def test_errors_name_the_call_the_value_and_the_fix(
    fw: Framework, call: Call, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        call(fw.array)
