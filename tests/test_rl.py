"""bilevel.rl: returns against hand-computed numbers, their identities, broadcasting, gradients
with respect to γ and λ against float64 finite differences, and vmap over episodes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import solvers
from bilevel import Batch, ForwardMode, Problem, Unrolled, hypergrad
from bilevel.rl import discounted_returns, lambda_returns, n_step_returns
from bilevel.testing import check_hypergrad

F64 = torch.float64


def t64(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=F64)


# A 3-step segment used throughout: R_1, R_2, R_3 = 1, 2, 3 and v(S_0 … S_3) = 10, 20, 30, 40.
R = t64(1.0, 2.0, 3.0)
V = t64(10.0, 20.0, 30.0, 40.0)


def close(a: torch.Tensor, b: Any, tol: float = 1e-12) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=tol)


def random_episode(
    seed: int, t: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(t, generator=g, dtype=F64)
    values = torch.randn(t + 1, generator=g, dtype=F64)
    gamma = torch.rand(t, generator=g, dtype=F64)
    lam = torch.rand(t, generator=g, dtype=F64)
    return rewards, values, gamma, lam


# --------------------------------------------------------------------------- hand-computed numbers
def test_discounted_returns_by_hand() -> None:
    # γ = 0.5: G_2 = 3, G_1 = 2 + 0.5·3 = 3.5, G_0 = 1 + 0.5·3.5 = 2.75
    assert close(discounted_returns(R, 0.5), [2.75, 3.5, 3.0])
    # bootstrap G_3 = 4: G_2 = 3 + 2 = 5, G_1 = 2 + 2.5 = 4.5, G_0 = 1 + 2.25 = 3.25
    assert close(discounted_returns(R, 0.5, bootstrap=4.0), [3.25, 4.5, 5.0])
    # per transition γ = (0.5, 0, 1), G_3 = 4: G_2 = 3 + 4 = 7, G_1 = 2 + 0·7 = 2, G_0 = 1 + 1 = 2
    assert close(discounted_returns(R, t64(0.5, 0.0, 1.0), bootstrap=t64(4.0)[0]), [2.0, 2.0, 7.0])


def test_n_step_returns_by_hand() -> None:
    # n = 1: R_{t+1} + 0.5 v(S_{t+1}) = 1 + 10, 2 + 15, 3 + 20
    assert close(n_step_returns(R, V, 0.5, 1), [11.0, 17.0, 23.0])
    # n = 2: G_{0:2} = 1 + 0.5·2 + 0.25·30 = 9.5, G_{1:3} = 2 + 0.5·3 + 0.25·40 = 13.5,
    # G_{2:3} (cut at T = 3) = 3 + 0.5·40 = 23
    assert close(n_step_returns(R, V, 0.5, 2), [9.5, 13.5, 23.0])
    # n = 2, γ = (1, 0.5, 0): G_{0:2} = 1 + 2 + 0.5·30 = 18, G_{1:3} = 2 + 0.5·3 + 0 = 3.5,
    # G_{2:3} = 3 + 0·40 = 3
    assert close(n_step_returns(R, V, t64(1.0, 0.5, 0.0), 2), [18.0, 3.5, 3.0])


def test_lambda_returns_by_hand() -> None:
    # γ = λ = 0.5, g_3 = v(S_3) = 40:
    # g_2 = 3 + 0.5·(0.5·40 + 0.5·40) = 23
    # g_1 = 2 + 0.5·(0.5·30 + 0.5·23) = 15.25
    # g_0 = 1 + 0.5·(0.5·20 + 0.5·15.25) = 9.8125
    assert close(lambda_returns(R, V, 0.5, 0.5), [9.8125, 15.25, 23.0])
    # the same from S&B eq. 12.3 for g_0: (1 − λ)(G_{0:1} + λ G_{0:2}) + λ² G_{0:3}
    # with G_{0:1} = 11, G_{0:2} = 9.5, G_{0:3} = 1 + 1 + 0.75 + 0.125·40 = 7.75
    assert 0.5 * (11 + 0.5 * 9.5) + 0.25 * 7.75 == 9.8125
    # per transition γ = (1, 0.5, 0), λ = (0, 1, 0.5): g_2 = 3, g_1 = 2 + 0.5·3 = 3.5,
    # g_0 = 1 + 1·(1·20 + 0·3.5) = 21
    assert close(lambda_returns(R, V, t64(1.0, 0.5, 0.0), t64(0.0, 1.0, 0.5)), [21.0, 3.5, 3.0])


# --------------------------------------------------------------------------- identities
@pytest.mark.parametrize("seed", range(4))
def test_identities(seed: int) -> None:
    t = 7
    rewards, values, gamma, lam = random_episode(seed, t)
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
        assert close(fn(torch.zeros(t, dtype=F64)), rewards)
    # discounted returns with no discount: reversed cumulative sums
    assert close(discounted_returns(rewards, 1.0), rewards.flip(0).cumsum(0).flip(0))


@given(
    t=st.integers(1, 8),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_lambda_return_is_the_weighted_average_of_n_step_returns(
    t: int, gamma: float, lam: float, seed: int
) -> None:
    """S&B eq. 12.3, episodic: g_t = (1−λ) Σ_{n=1}^{T−t−1} λ^{n−1} G_{t:t+n} + λ^{T−t−1} G_{t:T}."""
    rewards, values, _, _ = random_episode(seed, t)
    g = lambda_returns(rewards, values, gamma, lam)
    n_step = {n: n_step_returns(rewards, values, gamma, n) for n in range(1, t + 1)}
    for i in range(t):
        left = t - i
        expected = sum((1 - lam) * lam ** (n - 1) * n_step[n][i] for n in range(1, left))
        expected = expected + lam ** (left - 1) * n_step[left][i]
        assert close(g[i], expected, 1e-10)


def test_terminal_inside_the_segment_is_a_zero_discount() -> None:
    # Two episodes back to back, (1, 2) then (3,): γ = 0 on the transition entering the terminal.
    gamma = t64(0.9, 0.0, 0.9)
    assert close(discounted_returns(R, gamma), [1 + 0.9 * 2, 2.0, 3.0])
    assert close(lambda_returns(R, V, gamma, 0.7)[1], 2.0)


# --------------------------------------------------------------------------- broadcasting
@pytest.mark.parametrize("fn", ["discounted", "n_step", "lambda"])
def test_scalar_and_per_transition_forms_agree(fn: str) -> None:
    rewards, values, _, _ = random_episode(0, 6)

    def call(gamma: Any, lam: Any, **kw: Any) -> torch.Tensor:
        if fn == "discounted":
            return discounted_returns(rewards, gamma, bootstrap=values[-1], **kw)
        if fn == "n_step":
            return n_step_returns(rewards, values, gamma, 2, **kw)
        return lambda_returns(rewards, values, gamma, lam, **kw)

    ref = call(0.8, 0.6)
    assert close(call(torch.tensor(0.8, dtype=F64), torch.tensor(0.6, dtype=F64)), ref)
    assert close(call(torch.full((6,), 0.8, dtype=F64), 0.6), ref)
    assert close(call(0.8, torch.full((6,), 0.6, dtype=F64)), ref)
    # per-state tables: γ_t = table[S_{t+1}], with the states S_0 … S_6 = 0, 1, 2, 0, 1, 2, 0
    states = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    g_table, l_table = t64(0.3, 0.9, 0.6), t64(0.2, 0.5, 1.0)
    per_state = call(g_table, l_table, states=states)
    assert close(per_state, call(g_table[states[1:]], l_table[states[1:]]))
    assert close(call(0.8, 0.6, states=states), ref)  # numbers stay numbers with states


def test_output_dtype_follows_the_rewards() -> None:
    r32 = R.float()
    assert discounted_returns(r32, 0.9).dtype == torch.float32
    assert lambda_returns(r32, V.float(), 0.9, 0.5).dtype == torch.float32
    assert n_step_returns(r32, V.float(), 0.9, 2).shape == (3,)
    assert discounted_returns(t64(5.0), 0.9).tolist() == [5.0]  # T = 1


# --------------------------------------------------------------------------- gradients
def test_gradcheck_with_respect_to_gamma_lambda_values_and_rewards() -> None:
    rewards, values, gamma, lam = random_episode(1, 5)
    args = [x.clone().requires_grad_() for x in (rewards, values, gamma, lam)]
    table = t64(0.3, 0.8).requires_grad_()
    states = torch.tensor([0, 1, 1, 0, 1, 0])
    assert torch.autograd.gradcheck(lambda r, v, g, lm: lambda_returns(r, v, g, lm), args)
    assert torch.autograd.gradcheck(lambda r, v, g, _: n_step_returns(r, v, g, 3), args)
    assert torch.autograd.gradcheck(
        lambda r, v, g, _: discounted_returns(r, g, bootstrap=v[-1]), args
    )
    assert torch.autograd.gradcheck(
        lambda tb: lambda_returns(rewards, values, tb, tb.flip(0), states=states), [table]
    )


def _meta_problem(which: str) -> Problem:
    """Gradient steps of a one-hot value function w towards a return with γ = σ(η_γ) and
    λ = σ(η_λ), bootstrapping from a fixed critic ``task["v"]``; the outer loss is the squared
    error to the Monte-Carlo return of a fresh episode.

    The bootstrap values come from the task, not from w: ``.detach()`` (or the backend's
    ``stop_gradient``) inside the inner loss would cut the outer derivative too.
    """

    def returns(meta: dict[str, torch.Tensor], task: dict[str, torch.Tensor]) -> Any:
        gamma, lam = torch.sigmoid(meta["eta_gamma"]), torch.sigmoid(meta["eta_lam"])
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


@pytest.mark.parametrize("which", ["lambda", "n_step", "discounted"])
@pytest.mark.parametrize("strategy", [Unrolled(), ForwardMode()], ids=repr)
def test_hypergradient_through_returns_matches_finite_differences(
    which: str, strategy: Any
) -> None:
    t = 5
    g = torch.Generator().manual_seed(3)
    task = {
        "rewards": torch.randn(t, generator=g, dtype=F64),
        "fresh": torch.randn(t, generator=g, dtype=F64),
        "w0": torch.randn(t, generator=g, dtype=F64),
        "v": torch.randn(t + 1, generator=g, dtype=F64),
        "s": torch.tensor([0, 1, 2, 3, 4, 0]),
    }
    meta = {
        "eta_gamma": torch.randn(t, generator=g, dtype=F64),
        "eta_lam": torch.randn(t, generator=g, dtype=F64),
    }
    solver = solvers.GradientDescent(lr=0.2, steps=3)
    report = check_hypergrad(_meta_problem(which), solver, meta, task, strategy)
    assert report.worst <= 1
    grads = hypergrad(_meta_problem(which), solver, meta, task, strategy=strategy).grad
    assert float(grads["eta_gamma"].abs().sum()) > 0  # γ really is differentiated
    if which != "n_step":
        assert float(grads["eta_lam"].abs().sum()) > 0


def test_hypergradient_over_a_batch_of_episodes_is_vectorised() -> None:
    g = torch.Generator().manual_seed(4)
    n, t = 3, 4
    tasks = {
        "rewards": torch.randn(n, t, generator=g, dtype=F64),
        "fresh": torch.randn(n, t, generator=g, dtype=F64),
        "w0": torch.zeros(n, t, dtype=F64),
        "v": torch.randn(n, t + 1, generator=g, dtype=F64),
        "s": torch.zeros(n, t + 1, dtype=torch.long),
    }
    meta = {"eta_gamma": torch.zeros(t, dtype=F64), "eta_lam": torch.zeros(t, dtype=F64)}
    problem, solver = _meta_problem("lambda"), solvers.GradientDescent(lr=0.5, steps=1)
    batched = hypergrad(problem, solver, meta, Batch(tasks), strategy=Unrolled())
    looped = [
        hypergrad(problem, solver, meta, Batch(tasks).task(i), strategy=Unrolled()).grad
        for i in range(n)
    ]
    mean = torch.stack([x["eta_gamma"] for x in looped]).mean(0)
    assert close(batched.grad["eta_gamma"], mean)


# --------------------------------------------------------------------------- torch.func
def test_vmap_over_a_batch_of_episodes_matches_a_loop() -> None:
    n, t = 6, 5
    episodes = [random_episode(s, t) for s in range(n)]
    rewards, values, gamma, lam = (torch.stack(x) for x in zip(*episodes, strict=True))
    out = torch.func.vmap(lambda_returns)(rewards, values, gamma, lam)
    loop = torch.stack([lambda_returns(*e) for e in episodes])
    assert close(out, loop)
    # shared scalar γ, per-episode λ; and per-episode gradients with respect to γ
    out = torch.func.vmap(lambda r, v, lm: n_step_returns(r, v, 0.9, 2) + lm)(rewards, values, lam)
    assert out.shape == (n, t)

    def loss(g: torch.Tensor, r: torch.Tensor, v: torch.Tensor, lm: torch.Tensor) -> Any:
        return lambda_returns(r, v, g, lm).sum()

    per_episode = torch.func.vmap(torch.func.grad(loss))(gamma, rewards, values, lam)
    for i, (r, v, g, lm) in enumerate(episodes):
        assert close(per_episode[i], torch.func.grad(loss)(g, r, v, lm))
    # per-state tables shared across the batch, states batched
    states = torch.randint(0, 3, (n, t + 1), generator=torch.Generator().manual_seed(0))
    table = t64(0.2, 0.7, 0.95)
    out = torch.func.vmap(lambda r, s: discounted_returns(r, table, states=s))(rewards, states)
    loop = torch.stack(
        [discounted_returns(r, table[s[1:]]) for r, s in zip(rewards, states, strict=True)]
    )
    assert close(out, loop)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: discounted_returns([1.0, 2.0], 0.9), TypeError, "discounted_returns: rewards"),
        (lambda: discounted_returns(R.numpy(), 0.9), TypeError, "discounted_returns: found no"),
        (lambda: discounted_returns(torch.zeros(2, 3), 0.9), ValueError, r"shape \(T,\)"),
        (lambda: discounted_returns(torch.zeros(0), 0.9), ValueError, "T >= 1"),
        (lambda: discounted_returns(R, 1.5), ValueError, r"gamma=1\.5 must lie in \[0, 1\]"),
        (lambda: discounted_returns(R, t64(0.9, 0.9)), ValueError, r"shape \(2,\).*T = 3"),
        (lambda: discounted_returns(R, "0.9"), TypeError, "gamma must be"),
        (lambda: discounted_returns(R, 0.9, bootstrap=V), ValueError, "bootstrap=values"),
        (lambda: n_step_returns(R, V, 0.9, 0), ValueError, "n_step_returns: n=0"),
        (lambda: n_step_returns(R, V, 0.9, 2.0), TypeError, "n must be an int"),
        (lambda: n_step_returns(R, V[:3], 0.9, 2), ValueError, r"values must have shape \(4,\)"),
        (lambda: lambda_returns(R, V, 0.9, -0.1), ValueError, "lambda_returns: lam=-0.1"),
        (lambda: lambda_returns(R, V, 0.9, t64(1.0)), ValueError, "lam has shape"),
        (
            lambda: lambda_returns(R, V, t64(0.5, 0.9), 0.5, states=torch.tensor([0, 1, 0])),
            ValueError,
            r"states must be an integer array of shape \(4,\)",
        ),
        (
            lambda: lambda_returns(R, V, t64(0.5, 0.9), 0.5, states=t64(0, 1, 0, 1)),
            ValueError,
            "dtype torch.float64",
        ),
    ],
)
def test_errors_name_the_call_the_value_and_the_fix(call: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()
