"""``solvers.chain`` and its pieces against hand-computed numbers, torch, and finite differences.

Runs on both frameworks (``fw``) where the piece is backend-neutral. Tolerances: the pieces do
a handful of float64 operations per entry, so results equal their closed forms to ~1e-15
relative; ``1e-13`` leaves room for the order of summation in the norm.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from _frameworks import Framework, assert_close, numpy, xp
from _generators import randn, rng

from bilevel import Batch, Problem, Unrolled, hypergrad, solvers, tree
from bilevel.solvers import L1, SGD, Adam, ClipByGlobalNorm, CosineDecay, ScaleBySchedule, chain
from bilevel.testing import check_hypergrad

pytestmark = pytest.mark.filterwarnings("error::bilevel.BilevelWarning")

RTOL = 1e-13


def _grads(fw: Framework, scale: float, seed: int = 0) -> dict[str, Any]:
    g = rng(seed)
    return fw.tree({"a": scale * randn(g, 3, 2), "b": scale * randn(g)})


def _norm(t: Any) -> float:
    return float(np.sqrt(sum((np.asarray(x) ** 2).sum() for x in tree.leaves(numpy(t)))))


@pytest.mark.parametrize("scale", [10.0, 0.01])
def test_clip_by_global_norm_closed_form(fw: Framework, scale: float) -> None:
    """Above the threshold the joint norm becomes exactly ``c`` and the direction is kept;
    below it the gradients pass unchanged."""
    g, c = _grads(fw, scale), 1.0
    u, _ = ClipByGlobalNorm(c).update(g, ClipByGlobalNorm(c).init(g))
    norm = _norm(g)
    want = tree.map(lambda x: x * (c / max(norm, c)), numpy(g))
    assert_close(u, want, rtol=RTOL, what="clip")
    assert math.isclose(_norm(u), min(norm, c), rel_tol=RTOL)


def test_clip_by_global_norm_of_zero_is_zero(fw: Framework) -> None:
    g = _grads(fw, 0.0)
    u, _ = ClipByGlobalNorm(1.0).update(g, ())
    assert _norm(u) == 0.0


def test_clip_by_global_norm_matches_torch_clip_grad_norm() -> None:
    """``torch.nn.utils.clip_grad_norm_`` divides by ``norm + 1e-6``: relative difference
    ≤ 1e-6/norm = 1e-7 at norm 10."""
    g = _grads(Framework("torch"), 10.0)
    ps = [torch.zeros_like(x, requires_grad=True) for x in g.values()]
    for p, x in zip(ps, g.values(), strict=True):
        p.grad = x.clone()
    torch.nn.utils.clip_grad_norm_(ps, max_norm=1.0)
    u, _ = ClipByGlobalNorm(1.0).update(g, ())
    for p, x in zip(ps, u.values(), strict=True):
        torch.testing.assert_close(x, p.grad, rtol=2e-7, atol=0)


def test_l1_adds_the_sign_of_the_parameters(fw: Framework) -> None:
    params = fw.tree({"w": np.array([-2.0, 0.0, 3.0])})
    grads = fw.tree({"w": np.array([0.5, 0.5, 0.5])})
    u, _ = L1(0.1).update(grads, (), params)
    assert_close(u, {"w": np.array([0.4, 0.5, 0.6])}, rtol=RTOL)
    with pytest.raises(ValueError, match=r"L1\.update needs the parameters"):
        L1(0.1).update(grads, ())


def test_cosine_decay_and_schedule_closed_form() -> None:
    s = CosineDecay(steps=10, final=0.2)
    for k in range(14):
        want = 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * min(k, 10) / 10))
        assert math.isclose(s(k), want, rel_tol=1e-15)
    opt = ScaleBySchedule(s)
    state, g = opt.init(torch.zeros(())), torch.tensor(2.0, dtype=torch.float64)
    for k in range(12):
        u, state = opt.update(g, state)
        assert float(u) == 2.0 * s(k)


def test_schedule_returning_a_non_finite_factor_raises() -> None:
    opt = ScaleBySchedule(lambda k: math.inf if k == 1 else 1.0)
    _, state = opt.update(torch.ones(1), opt.init(torch.ones(1)))
    with pytest.raises(ValueError, match=r"schedule\(1\) = inf is not finite"):
        opt.update(torch.ones(1), state)


def test_chain_equals_adam_on_the_clipped_l1_gradient_with_cosine_decay(fw: Framework) -> None:
    """The chain against the same algorithm written out in NumPy float64, step by step."""
    lr, c, lam, steps, b1, b2, eps = 0.03, 2.0, 0.02, 8, 0.9, 0.999, 1e-8
    opt = chain(ClipByGlobalNorm(c), L1(lam), Adam(lr), ScaleBySchedule(CosineDecay(steps)))
    g0 = rng(3)
    params = randn(g0, 5)
    m, v = np.zeros(5), np.zeros(5)
    p_fw = fw.array(params)
    state = opt.init(p_fw)
    for k in range(steps + 2):
        grad = randn(g0, 5) * (10.0 if k % 3 == 0 else 0.1)  # clipped on every third step
        gc = grad * min(1.0, c / np.linalg.norm(grad)) + lam * np.sign(params)
        m, v = b1 * m + (1 - b1) * gc, b2 * v + (1 - b2) * gc * gc
        t = k + 1
        step = -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        params = params + step * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))
        u, state = opt.update(fw.array(grad), state, p_fw)
        p_fw = p_fw + u
        assert_close(p_fw, params, rtol=RTOL, atol=1e-15, what=f"step {k}")


def _inner(w: Any, m: Any, t: Any) -> Any:
    return 0.5 * (w * (t["A"] @ w)).sum() - (w * m["b"]).sum() + (xp(w).tanh(w) ** 2).sum()


def _outer(w: Any, m: Any, t: Any) -> Any:
    return ((w - t["z"]) ** 2).sum() + (m["b"] ** 2).sum()


PROBLEM = Problem(init=lambda m, t: m["w0"] * 1.0, inner_loss=_inner, outer_loss=_outer)


def _data(fw: Framework, n_tasks: int = 0) -> tuple[Any, Any]:
    g = rng(7)
    shape = (n_tasks,) if n_tasks else ()
    a = randn(g, *shape, 3, 3)
    task = {"A": np.eye(3) + 0.1 * (a + np.swapaxes(a, -1, -2)), "z": randn(g, *shape, 3)}
    return fw.tree({"w0": randn(g, 3), "b": randn(g, 3)}), fw.tree(task)


def test_hypergradient_through_a_chained_inner_optimizer(fw: Framework) -> None:
    """Clipping is active (the first gradients have norm ≈ 3 > 0.5) and the schedule decays:
    the unrolled hypergradient through ``Optimizer(chain(...))`` matches central differences
    (check_hypergrad's default tolerance, see bilevel.testing)."""
    meta, task = _data(fw)
    opt = chain(ClipByGlobalNorm(0.5), L1(0.01), SGD(0.2, momentum=0.5),
                ScaleBySchedule(CosineDecay(6, final=0.1)))  # fmt: skip
    check_hypergrad(PROBLEM, solvers.Optimizer(opt, steps=6), meta, task, Unrolled())


def test_chain_is_vmapped_over_a_batch_and_equals_the_mean_over_tasks(fw: Framework) -> None:
    meta, tasks = _data(fw, n_tasks=3)
    solver = solvers.Optimizer(chain(ClipByGlobalNorm(0.5), Adam(0.1)), steps=4)
    assert solver.vectorizable
    batched = hypergrad(PROBLEM, solver, meta, Batch(tasks), strategy=Unrolled())
    each = [
        hypergrad(PROBLEM, solver, meta, tree.index(tasks, i), strategy=Unrolled()).grad
        for i in range(3)
    ]
    mean = tree.map(lambda *xs: sum(np.asarray(x) for x in xs) / 3, *[numpy(e) for e in each])
    assert_close(batched.grad, mean, rtol=1e-12, atol=1e-15)


def test_chain_with_a_stateful_member_is_not_vectorizable() -> None:
    import torchopt

    assert not chain(ClipByGlobalNorm(1.0), torchopt.adam(1e-3)).vectorizable
    assert chain(ClipByGlobalNorm(1.0), SGD(0.1)).vectorizable


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: chain(), ValueError, r"chain\(\): give at least one transformation"),
        (lambda: chain(Adam), TypeError, r"transformation 0 is the class Adam"),
        (lambda: chain(SGD(0.1), object()), TypeError, r"transformation 1 \(<object"),
        (lambda: solvers.Chain([SGD(0.1)]), TypeError, r"transforms must be a tuple"),  # type: ignore[arg-type]
        (lambda: ClipByGlobalNorm(0.0), ValueError, r"max_norm=0.0 must be positive"),
        (lambda: L1(-1.0), ValueError, r"weight=-1.0 must be >= 0"),
        (lambda: CosineDecay(0), ValueError, r"steps=0 must be >= 1"),
        (lambda: CosineDecay(5, final=2.0), ValueError, r"final must be in \[0, 1\]"),
        (lambda: ScaleBySchedule(lambda: 1.0), TypeError, r"ScaleBySchedule: schedule"),
    ],
)
def test_bad_arguments_are_named(build: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()
