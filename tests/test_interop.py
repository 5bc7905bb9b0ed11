"""Agreement with ``higher`` and ``torchopt``: the same MAML meta-gradient, computed four ways.

The problem is the classic sinusoid-regression MAML setup (Finn et al. 2017) in float64: a
1-40-40-1 ReLU ``nn.Module``, a meta-batch of 4 tasks, K plain SGD steps on the support set and
the mean-squared error on the query set. The meta-gradient is computed

(a) by ``bilevel`` (``Problem`` + ``solvers.GradientDescent`` + ``Unrolled()`` on a ``Batch``),
(b) by ``higher.innerloop_ctx`` around ``torch.optim.SGD``,
(c) by torchopt's functional API (``torchopt.sgd`` + ``torchopt.apply_updates``),
(d) by a hand-written ``torch.func`` reference (``torch.func.grad`` inside a Python loop).

Tolerance of the comparisons, ``RTOL = 1e-10`` relative to the largest gradient entry: the four
computations do the same float64 arithmetic in different op orders (vmap vs loop, fused vs
unfused updates, reduction order), each op rounding with relative error ~1e-16 and the graph
having a few thousand ops along any path, which puts the expected discrepancy at ~1e-14
relative; 1e-10 is generous and still 6+ orders of magnitude below the size of any real
mistake (dropping the second-order term changes the gradient by 20%-3000% here, see
``test_second_order_term_matters``).
"""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from bilevel import Batch, FirstOrder, Problem, Unrolled, hypergrad, solvers
from bilevel.testing import check_hypergrad

higher = pytest.importorskip("higher")
torchopt = pytest.importorskip("torchopt")

DTYPE = torch.float64
N_TASKS = 4
N_SHOTS = 10
# Same float64 arithmetic in different op orders: ~1e-14 relative expected, 1e-10 generous.
RTOL = 1e-10
CASES = [(1, 0.01), (1, 0.1), (5, 0.01), (5, 0.1)]  # (inner steps K, inner learning rate)


# ----------------------------------------------------------------------------- the problem


def _make_module(
    widths: tuple[int, ...] = (1, 40, 40, 1), act: type[nn.Module] = nn.ReLU, seed: int = 0
) -> nn.Module:
    """An MLP in float64, initialised from its own generator (the global RNG is untouched)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        layers += [nn.Linear(n_in, n_out)] + ([act()] if i < len(widths) - 2 else [])
    module = nn.Sequential(*layers).to(DTYPE)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            bound = 1 / math.sqrt(p.shape[1]) if p.ndim == 2 else 0.1
            p.copy_((2 * torch.rand(p.shape, generator=gen, dtype=DTYPE) - 1) * bound)
    return module


def _sinusoid_tasks(seed: int = 0, n_tasks: int = N_TASKS) -> dict[str, torch.Tensor]:
    """Amplitude in [0.1, 5], phase in [0, π], inputs in [-5, 5]: Finn et al.'s distribution."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n_tasks, 1, 1)
    amp = 0.1 + 4.9 * torch.rand(shape, generator=gen, dtype=DTYPE)
    phase = math.pi * torch.rand(shape, generator=gen, dtype=DTYPE)
    xs = -5 + 10 * torch.rand(n_tasks, N_SHOTS, 1, generator=gen, dtype=DTYPE)
    xq = -5 + 10 * torch.rand(n_tasks, N_SHOTS, 1, generator=gen, dtype=DTYPE)
    return {
        "xs": xs,
        "ys": amp * torch.sin(xs + phase),
        "xq": xq,
        "yq": amp * torch.sin(xq + phase),
    }


def _task(tasks: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i] for k, v in tasks.items()}


def _mse(module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    return ((functional_call(module, params, (x,)) - y) ** 2).mean()


def _maml_problem(module: nn.Module) -> Problem:
    return Problem(
        init=lambda meta, task: meta,
        inner_loss=lambda p, meta, task: _mse(module, p, task["xs"], task["ys"]),
        outer_loss=lambda p, meta, task: _mse(module, p, task["xq"], task["yq"]),
    )


def _meta(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _assert_trees_close(got: dict, want: dict, rtol: float = RTOL) -> None:
    """Every leaf within ``rtol · max_entry(want)``: one scale for the whole gradient, so a leaf
    whose gradient happens to be tiny is not held to an unreachable relative standard."""
    assert got.keys() == want.keys()
    scale = max(float(w.abs().max()) for w in want.values())
    assert scale > 0, "the reference gradient is zero: the comparison would be vacuous"
    for k in want:
        err = float((got[k] - want[k]).abs().max())
        assert err <= rtol * scale, f"leaf {k}: max |diff| {err:.3g} > {rtol:g} × {scale:.3g}"


# ------------------------------------------------------------ the four meta-gradients, cached


@functools.cache
def _bilevel(k: int, lr: float, strategy_name: str = "unrolled"):
    module = _make_module()
    strategy = Unrolled() if strategy_name == "unrolled" else FirstOrder()
    res = hypergrad(
        _maml_problem(module),
        solvers.GradientDescent(lr=lr, steps=k),
        _meta(module),
        Batch(_sinusoid_tasks()),
        strategy=strategy,
    )
    return res


def _higher(k: int, lr: float, *, second_order: bool):
    """MAML with higher: the mean outer loss over tasks, then ``.backward()`` into the module.

    First-order MAML (``track_higher_grads=False``): higher detaches every step, so the outer
    loss does not reach the module's parameters; the first-order meta-gradient is the gradient
    with respect to the adapted (fast) weights, accumulated by hand, as in higher's examples.
    """
    module = _make_module()
    tasks = _sinusoid_tasks()
    inner_opt = torch.optim.SGD(module.parameters(), lr=lr)
    names = [n for n, _ in module.named_parameters()]
    first_order = {n: torch.zeros_like(p) for n, p in module.named_parameters()}
    total = torch.zeros((), dtype=DTYPE)
    fast_weights = []
    for i in range(N_TASKS):
        t = _task(tasks, i)
        with higher.innerloop_ctx(
            module, inner_opt, copy_initial_weights=False, track_higher_grads=second_order
        ) as (fmodel, diffopt):
            for _ in range(k):
                diffopt.step(((fmodel(t["xs"]) - t["ys"]) ** 2).mean())
            outer = ((fmodel(t["xq"]) - t["yq"]) ** 2).mean()
            fast_weights.append(
                {n: p.detach() for n, p in zip(names, fmodel.parameters(), strict=True)}
            )
            if second_order:
                total = total + outer
            else:
                grads = torch.autograd.grad(outer, list(fmodel.parameters()))
                for n, g in zip(names, grads, strict=True):
                    first_order[n] += g / N_TASKS
                total = total + outer.detach()
    if not second_order:
        return total / N_TASKS, first_order, fast_weights
    (total / N_TASKS).backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
    return (total / N_TASKS).detach(), grads, fast_weights


def _torchopt(k: int, lr: float):
    """MAML with torchopt's functional API: ``torchopt.sgd`` + ``apply_updates(inplace=False)``."""
    module = _make_module()
    tasks = _sinusoid_tasks()
    meta = {n: p.detach().clone().requires_grad_() for n, p in module.named_parameters()}
    transform = torchopt.sgd(lr=lr)
    total = torch.zeros((), dtype=DTYPE)
    for i in range(N_TASKS):
        t = _task(tasks, i)
        params, state = meta, transform.init(meta)
        for _ in range(k):
            loss = _mse(module, params, t["xs"], t["ys"])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            grads = dict(zip(params.keys(), grads, strict=True))
            updates, state = transform.update(grads, state, params=params, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        total = total + _mse(module, params, t["xq"], t["yq"])
    grads = torch.autograd.grad(total / N_TASKS, list(meta.values()))
    return dict(zip(meta.keys(), grads, strict=True))


def _torch_func(k: int, lr: float, momentum: float = 0.0):
    """The reference by hand: ``torch.func.grad`` of a Python loop over tasks and steps.

    With ``momentum > 0`` the inner loop is heavy ball, ``v ← μ v + ∇f``, ``φ ← φ − α v``.
    """
    module = _make_module()
    tasks = _sinusoid_tasks()

    def inner(p, t):
        return _mse(module, p, t["xs"], t["ys"])

    def meta_objective(meta):
        total = 0.0
        for i in range(N_TASKS):
            t = _task(tasks, i)
            p = meta
            v = {n: torch.zeros_like(x) for n, x in p.items()}
            for _ in range(k):
                g = torch.func.grad(inner)(p, t)
                v = {n: momentum * v[n] + g[n] for n in p}
                p = {n: p[n] - lr * v[n] for n in p}
            total = total + _mse(module, p, t["xq"], t["yq"])
        return total / N_TASKS

    return torch.func.grad(meta_objective)(_meta(module))


# ------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize(("k", "lr"), CASES)
def test_maml_matches_higher(k: int, lr: float) -> None:
    res = _bilevel(k, lr)
    value, grads, fast_weights = _higher(k, lr, second_order=True)
    _assert_trees_close(res.grad, grads)
    # The outer value is the same mean query loss; the same 1e-10 budget covers it.
    assert abs(float(res.value) - float(value)) <= RTOL * abs(float(value))
    # res.params holds every task's adapted weights along a leading task axis.
    for i, fw in enumerate(fast_weights):
        _assert_trees_close({n: p[i] for n, p in res.params.items()}, fw)


@pytest.mark.parametrize(("k", "lr"), CASES)
def test_maml_matches_torchopt_functional(k: int, lr: float) -> None:
    _assert_trees_close(_bilevel(k, lr).grad, _torchopt(k, lr))


@pytest.mark.parametrize(("k", "lr"), CASES)
def test_maml_matches_hand_written_torch_func(k: int, lr: float) -> None:
    _assert_trees_close(_bilevel(k, lr).grad, _torch_func(k, lr))


@pytest.mark.parametrize(("k", "lr"), CASES)
def test_first_order_maml_matches_higher_without_higher_grads(k: int, lr: float) -> None:
    res = _bilevel(k, lr, "first_order")
    value, grads, _ = _higher(k, lr, second_order=False)
    _assert_trees_close(res.grad, grads)
    assert abs(float(res.value) - float(value)) <= RTOL * abs(float(value))


@pytest.mark.parametrize(("k", "lr"), CASES)
def test_second_order_term_matters(k: int, lr: float) -> None:
    """Guards the comparisons above against vacuity: on this problem MAML and first-order MAML
    differ by far more than RTOL (measured: 22% for K=1, lr=0.01 up to 30x for K=5, lr=0.1), so
    agreeing with higher's second-order gradient is a real statement about the Hessian term."""
    unrolled, first_order = _bilevel(k, lr).grad, _bilevel(k, lr, "first_order").grad
    scale = max(float(g.abs().max()) for g in first_order.values())
    diff = max(float((unrolled[n] - first_order[n]).abs().max()) for n in unrolled)
    assert diff > 1e-2 * scale  # 1e-2: an order of magnitude below the smallest measured gap


def test_optimizer_torchopt_sgd_equals_gradient_descent() -> None:
    """torchopt's update, driven by solvers.Optimizer with inplace=False, keeps the meta-gradient:
    the Unrolled hypergradient equals GradientDescent's (which test_maml_matches_higher ties to
    higher). Both compute ``φ − α g`` with the same roundings, so only op order may differ."""
    module = _make_module()
    problem, meta, tasks = _maml_problem(module), _meta(module), Batch(_sinusoid_tasks())
    k, lr = 5, 0.01
    gd = hypergrad(problem, solvers.GradientDescent(lr, k), meta, tasks, strategy=Unrolled())
    opt = hypergrad(
        problem, solvers.Optimizer(torchopt.sgd(lr), k), meta, tasks, strategy=Unrolled()
    )
    _assert_trees_close(opt.grad, gd.grad)
    _assert_trees_close(opt.params, gd.params)


def test_heavy_ball_gradient_descent_equals_torchopt_sgd_momentum() -> None:
    """Momentum conventions. torchopt 0.7's ``sgd(lr, momentum=μ)`` (dampening 0, nesterov off)
    is ``trace ← μ·trace + g`` (the first call sets ``trace = g``, the same thing from a zero
    trace) followed by ``update = −lr·trace``: the PyTorch heavy-ball convention. That is
    exactly ``GradientDescent(lr, steps, momentum=μ)``'s ``v ← μ v + ∇f, φ ← φ − α v``, so the
    two must agree, and both must agree with the hand-written heavy-ball loop in torch.func.
    (With dampening d > 0 torchopt would use ``(1 − d)·g`` after the first step: a different
    map, not compared here.)"""
    module = _make_module()
    problem, meta, tasks = _maml_problem(module), _meta(module), Batch(_sinusoid_tasks())
    k, lr, mu = 5, 0.01, 0.9
    gd = hypergrad(
        problem, solvers.GradientDescent(lr, k, momentum=mu), meta, tasks, strategy=Unrolled()
    )
    opt = hypergrad(
        problem,
        solvers.Optimizer(torchopt.sgd(lr, momentum=mu), k),
        meta,
        tasks,
        strategy=Unrolled(),
    )
    _assert_trees_close(opt.grad, gd.grad)
    _assert_trees_close(gd.grad, _torch_func(k, lr, momentum=mu))
    # Momentum changes the map (guards against momentum being silently ignored).
    plain = _bilevel(k, lr).grad
    scale = max(float(g.abs().max()) for g in plain.values())
    assert max(float((gd.grad[n] - plain[n]).abs().max()) for n in plain) > 1e-3 * scale


def _small_tanh_problem():
    """A smooth problem (tanh, so no ReLU kink can sit inside a finite-difference step) with
    13 meta-parameters, so check_hypergrad checks every coordinate (its max_coordinates is 32)."""
    module = _make_module(widths=(1, 4, 1), act=nn.Tanh, seed=1)
    return _maml_problem(module), _meta(module), _task(_sinusoid_tasks(seed=3), 0)


@pytest.mark.parametrize(
    "make_transform",
    [lambda: torchopt.adam(0.05), lambda: torchopt.sgd(0.01, momentum=0.9)],
    ids=["adam", "sgd-momentum"],
)
def test_torchopt_transforms_pass_check_hypergrad(make_transform) -> None:
    """Unrolled through torchopt's Adam / momentum SGD equals finite differences of the same
    unrolled map; check_hypergrad's default tolerances (rtol 1e-6, derived in its docstring for
    float64 central differences with h = 1e-5) apply unchanged."""
    problem, meta, task = _small_tanh_problem()
    solver = solvers.Optimizer(make_transform(), 5)
    report = check_hypergrad(problem, solver, meta, task, Unrolled())
    assert max(abs(a) for a in report.analytic) > 1e-3  # a non-trivial gradient was checked


@pytest.mark.parametrize("case", ["adam", "sgd-momentum-reused"])
@pytest.mark.parametrize("strategy", [Unrolled(), FirstOrder()], ids=repr)
def test_batch_through_torchopt_state_equals_loop_over_tasks(case: str, strategy) -> None:
    """hypergrad: a meta-batch is vmapped where the solver allows it and looped otherwise, "with
    the same result"; the mean of per-task hypergradients is the reference (same arithmetic
    per task, so 1e-10)."""
    problem = Problem(
        init=lambda m, t: m,
        inner_loss=lambda w, m, t: ((w - t) ** 2).sum(),
        outer_loss=lambda w, m, t: (w**2).sum(),
    )
    meta = torch.tensor([1.0, 2.0], dtype=DTYPE)
    tasks = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=DTYPE)
    if case == "adam":
        solver = solvers.Optimizer(torchopt.adam(0.1), 2)
    else:
        solver = solvers.Optimizer(torchopt.sgd(0.1, momentum=0.9), 2)
        hypergrad(problem, solver, meta, tasks[0], strategy=strategy)  # the transform's 1st use
    loop = [hypergrad(problem, solver, meta, t, strategy=strategy).grad for t in tasks]
    batched = hypergrad(problem, solver, meta, Batch(tasks), strategy=strategy)
    torch.testing.assert_close(batched.grad, sum(loop) / 2, rtol=RTOL, atol=0)
