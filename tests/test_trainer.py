"""solvers.SGD / solvers.Adam against torch.optim and torchopt, and bilevel.trainer.fit against a
hand-written outer loop. Tolerances: float64 throughout; the same arithmetic in another order
differs by a few ulps per step, so 1e-12 relative over ≤ 20 steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchopt

from bilevel import Batch, ForwardMode, Problem, Truncated, Unrolled, hypergrad, recipes, solvers
from bilevel import trainer as fit_module
from bilevel.testing import check_hypergrad
from bilevel.trainer import History, fit

F64 = torch.float64


def _quadratic(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 4, generator=g, dtype=F64)
    return a @ a.T + torch.eye(4, dtype=F64), torch.randn(4, generator=g, dtype=F64)


def _run_ours(opt: Any, x0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    x, state = x0, opt.init(x0)
    for _ in range(n):
        updates, state = opt.update(a @ x - b, state, x)
        x = x + updates
    return x


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (solvers.SGD(lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
        (solvers.SGD(lr=0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
        (solvers.Adam(lr=0.1), lambda p: torch.optim.Adam(p, lr=0.1)),
        (
            solvers.Adam(lr=0.03, b1=0.5, b2=0.9, eps=1e-6),
            lambda p: torch.optim.Adam(p, lr=0.03, betas=(0.5, 0.9), eps=1e-6),
        ),
    ],
)
def test_transforms_match_torch_optim(ours: Any, theirs: Any) -> None:
    a, b = _quadratic(0)
    x0 = torch.linspace(-1, 1, 4, dtype=F64)
    p = x0.clone().requires_grad_()
    opt = theirs([p])
    for _ in range(20):
        opt.zero_grad()
        p.grad = (a @ p - b).detach()
        opt.step()
    torch.testing.assert_close(_run_ours(ours, x0, a, b, 20), p.detach(), rtol=1e-12, atol=1e-12)


def test_bad_hyperparameters_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"SGD\(lr=0\).*positive"):
        solvers.SGD(lr=0)
    with pytest.raises(ValueError, match=r"momentum must be < 1"):
        solvers.SGD(lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match=r"b2 must be < 1"):
        solvers.Adam(lr=0.1, b2=1.0)
    with pytest.raises(TypeError, match=r"lr must be a number"):
        solvers.Adam(lr="0.1")  # type: ignore[arg-type]


def _problem() -> Problem:
    """Inner: ½‖w − θ⊙x‖² + ½‖w‖²; outer: ½‖w − y‖² (θ enters the inner loss)."""

    def inner(w: torch.Tensor, m: dict[str, torch.Tensor], t: dict[str, torch.Tensor]) -> Any:
        return 0.5 * ((w - m["theta"] * t["x"]) ** 2).sum() + 0.5 * (w**2).sum()

    def outer(w: torch.Tensor, m: dict[str, torch.Tensor], t: dict[str, torch.Tensor]) -> Any:
        return 0.5 * ((w - t["y"]) ** 2).sum()

    return Problem(init=lambda m, t: torch.zeros_like(t["x"]), inner_loss=inner, outer_loss=outer)


def _tasks(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n, 3, generator=g, dtype=F64),
        "y": torch.randn(n, 3, generator=g, dtype=F64),
    }


def test_inner_adam_is_vectorised_and_matches_finite_differences() -> None:
    problem = _problem()
    solver = solvers.Optimizer(solvers.Adam(lr=0.1), steps=5)
    assert solver.vectorizable and not solvers.Optimizer(torchopt.adam(0.1), steps=5).vectorizable
    meta = {"theta": torch.tensor([0.3, -0.2, 0.5], dtype=F64)}
    tasks = _tasks(4, 1)
    batched = hypergrad(problem, solver, meta, Batch(tasks), strategy=Unrolled())
    looped = [
        hypergrad(problem, solver, meta, {k: v[i] for k, v in tasks.items()}, strategy=Unrolled())
        for i in range(4)
    ]
    mean = torch.stack([r.grad["theta"] for r in looped]).mean(0)
    torch.testing.assert_close(batched.grad["theta"], mean, rtol=1e-12, atol=1e-14)
    check_hypergrad(problem, solver, meta, {k: v[0] for k, v in tasks.items()}, strategy=Unrolled())
    # the same meta-gradient as torchopt's adam driven by the same solver, up to torchopt's
    # float32 bias correction (1 − β^t from an int64 count: ~6e-8 relative per step, amplified
    # by Adam's normalisation), hence 1e-4 rather than 1e-12
    theirs = hypergrad(
        problem,
        solvers.Optimizer(torchopt.adam(0.1), steps=5),
        meta,
        Batch(tasks),
        strategy=Unrolled(),
    )
    torch.testing.assert_close(batched.grad["theta"], theirs.grad["theta"], rtol=1e-4, atol=1e-8)


def _config() -> recipes.Config:
    return recipes.Config(_problem(), solvers.GradientDescent(lr=0.5, steps=3), Unrolled())


@pytest.mark.parametrize("optimizer", [solvers.SGD(lr=0.3, momentum=0.5), solvers.Adam(lr=0.05)])
def test_fit_equals_a_hand_written_outer_loop(optimizer: Any) -> None:
    cfg, pool = _config(), _tasks(12, 2)

    def tasks(step: int) -> Batch:
        idx = torch.arange(3) + 3 * (step % 4)
        return Batch({k: v[idx] for k, v in pool.items()})

    meta0 = {"theta": torch.zeros(3, dtype=F64)}
    seen: list[tuple[int, torch.Tensor]] = []
    out = fit(
        cfg,
        meta0,
        tasks,
        optimizer=optimizer,
        steps=8,
        evaluate=lambda m: {"theta_norm": float(m["theta"].norm())},
        every=3,
        callback=lambda s, m, r: seen.append((s, m["theta"])),
        progress=False,
    )
    meta, state, losses = meta0, optimizer.init(meta0), []
    for step in range(8):
        res = hypergrad(cfg.problem, cfg.solver, meta, tasks(step), strategy=cfg.strategy)
        losses.append(float(res.value))
        torch.testing.assert_close(seen[step][1], meta["theta"], rtol=0, atol=0)
        updates, state = optimizer.update(res.grad, state, meta)
        meta = {"theta": meta["theta"] + updates["theta"]}
    torch.testing.assert_close(out.meta["theta"], meta["theta"], rtol=1e-12, atol=1e-14)
    assert out.history.series("outer_loss") == (list(range(8)), losses)
    steps, norms = out.history.series("theta_norm")
    assert steps == [0, 3, 6, 8] and norms[0] == 0.0
    assert norms[-1] == pytest.approx(float(meta["theta"].norm()), rel=1e-12)
    assert [s for s, _ in seen] == list(range(8))
    assert float(meta0["theta"].abs().sum()) == 0.0  # the caller's meta is not modified


def test_fit_with_torchopt_and_a_trainable_parameter_learns() -> None:
    cfg, pool = _config(), _tasks(4, 3)
    meta = {"theta": torch.nn.Parameter(torch.zeros(3, dtype=F64))}
    out = fit(
        cfg, meta, lambda s: Batch(pool), optimizer=torchopt.adam(0.05), steps=60, progress=False
    )
    _, losses = out.history.series("outer_loss")
    assert losses[-1] < 0.9 * losses[0]
    assert not out.meta["theta"].requires_grad  # no graph kept across outer steps
    ours = fit(
        cfg, meta, lambda s: Batch(pool), optimizer=solvers.Adam(0.05), steps=60, progress=False
    )
    # torchopt's bias correction is float32 (see above): 1e-4, not 1e-12
    torch.testing.assert_close(ours.meta["theta"], out.meta["theta"], rtol=1e-4, atol=1e-8)


def test_fit_rejects_bad_arguments() -> None:
    cfg, task = _config(), {k: v[0] for k, v in _tasks(1, 0).items()}
    meta = {"theta": torch.zeros(3, dtype=F64)}
    with pytest.raises(TypeError, match=r"fit: config must be a bilevel.recipes.Config"):
        fit(cfg.problem, meta, lambda s: task, optimizer=solvers.SGD(0.1), steps=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"fit: optimizer must be an optax-style transformation"):
        fit(cfg, meta, lambda s: task, optimizer=torch.optim.SGD, steps=1)
    with pytest.raises(TypeError, match=r"fit: tasks must be a function"):
        fit(cfg, meta, task, optimizer=solvers.SGD(0.1), steps=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"fit: steps=-1 must be >= 0"):
        fit(cfg, meta, lambda s: task, optimizer=solvers.SGD(0.1), steps=-1)


def test_history_plot_and_lookup(tmp_path: Path) -> None:
    h = History()
    for s in range(30):
        h.record("outer_loss", s, 1.0 / (s + 1))
    h.record("accuracy", 29, 0.9)
    path = h.plot(tmp_path / "sub" / "h.png", smooth=5)
    assert path.exists() and path.stat().st_size > 1000
    with pytest.raises(KeyError, match=r"no series 'loss'; recorded: \['outer_loss', 'accuracy'\]"):
        h.series("loss")
    assert "outer_loss: 30 points" in repr(h)


@pytest.mark.parametrize(
    ("stateful", "transform", "rtol"),
    [
        (lambda p: torch.optim.Adam(p, lr=0.05), solvers.Adam(0.05), 1e-12),
        (lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.5), solvers.SGD(0.2, 0.5), 1e-12),
        # torchopt's bias correction is float32 (see above)
        (lambda p: torchopt.Adam(p, lr=0.05), solvers.Adam(0.05), 1e-4),
    ],
)
def test_fit_steps_a_torch_optim_style_optimizer_in_place(
    stateful: Any, transform: Any, rtol: float
) -> None:
    cfg, pool = _config(), _tasks(4, 4)
    theta = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    meta = {"theta": theta}
    out = fit(
        cfg, meta, lambda s: Batch(pool), optimizer=stateful([theta]), steps=25, progress=False
    )
    assert out.meta["theta"] is theta  # stepped in place, as torch.optim does
    ref = fit(
        cfg,
        {"theta": torch.zeros(3, dtype=F64)},
        lambda s: Batch(pool),
        optimizer=transform,
        steps=25,
        progress=False,
    )
    torch.testing.assert_close(theta.detach(), ref.meta["theta"], rtol=rtol, atol=1e-12)
    assert theta.grad is None  # zeroed after the last step: no stale gradient left behind


def test_fit_needs_a_stateful_optimizer_built_on_the_meta_tensors() -> None:
    cfg, task = _config(), {k: v[0] for k, v in _tasks(1, 0).items()}
    meta = {"theta": torch.zeros(3, dtype=F64, requires_grad=True)}
    other = torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1)
    with pytest.raises(TypeError, match=r"does not hold meta leaves \[0\].*torch.optim.Adam\(meta"):
        fit(cfg, meta, lambda s: task, optimizer=other, steps=1, progress=False)


@pytest.mark.parametrize("strategy", [Unrolled(), Truncated(2), ForwardMode()], ids=str)
def test_inner_adam_with_a_zero_gradient_coordinate_and_truncation(strategy: Any) -> None:
    """θ_1 only reaches w_1 through init, and w_1's gradient is always 0, so Adam's v_1 stays 0:
    √v must not put ∞ · 0 = NaN into the hypergradient (dF/dθ_1 = 2·w_1·2θ_1 = 32), and
    Truncated must cope with Adam's integer step count in its frozen state."""
    problem = Problem(
        init=lambda m, t: m * m,
        inner_loss=lambda w, m, t: (w[0] - t * m[0]) ** 2,
        outer_loss=lambda w, m, t: (w**2).sum(),
    )
    meta, task = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor(0.5, dtype=F64)
    solver = solvers.Optimizer(solvers.Adam(0.1), steps=4)
    res = hypergrad(problem, solver, meta, task, strategy=strategy)
    assert float(res.grad[1]) == pytest.approx(0.0 if isinstance(strategy, Truncated) else 32.0)
    check_hypergrad(problem, solver, meta, task, strategy=strategy)


# ------------------------------------------------------------------ fit's errors and Ctrl-C


def test_an_exploding_outer_step_names_the_step_and_the_optimizer() -> None:
    """SGD with lr = 1e308 sends θ to −inf at the first update (g = (3.4, 2.1, 5.8) at θ = 10,
    and 1e308 · 2 overflows float64): the error names
    outer step 0 and the optimizer, not the inner loop or the task data, and carries the
    History and the last finite meta-parameters (the initial ones)."""
    cfg, pool = _config(), _tasks(4, 4)
    meta = {"theta": torch.full((3,), 10.0, dtype=F64)}
    with pytest.raises(fit_module.OuterStepDiverged) as caught:
        fit(cfg, meta, lambda s: Batch(pool), optimizer=solvers.SGD(lr=1e308), steps=5)
    err = caught.value
    assert isinstance(err, RuntimeError)
    message = str(err)
    assert "fit: outer step 0" in message and "SGD(lr=1e+308" in message
    assert "lower its learning rate" in message and "ClipByGlobalNorm" in message
    assert err.step == 0
    torch.testing.assert_close(err.trained.meta["theta"], meta["theta"], rtol=0, atol=0)
    assert err.trained.history.series("outer_loss")[0] == [0]


def test_an_exploding_step_of_a_torch_optim_optimizer_keeps_the_last_finite_values() -> None:
    """A torch.optim optimizer steps the caller's tensors in place: they hold inf afterwards,
    and the error carries a copy of the values before the exploding step (step 2 here)."""
    cfg, pool = _config(), _tasks(4, 4)
    theta = torch.nn.Parameter(torch.full((3,), 10.0, dtype=F64))
    opt = torch.optim.SGD([theta], lr=0.1)

    def tasks(step: int) -> Batch:
        if step == 2:  # from here on the learning rate explodes
            opt.param_groups[0]["lr"] = 1e308
        return Batch(pool)

    before = fit(
        cfg,
        {"theta": torch.full((3,), 10.0, dtype=F64)},
        lambda s: Batch(pool),
        optimizer=solvers.SGD(lr=0.1),
        steps=2,
        progress=False,
    )
    with pytest.raises(fit_module.OuterStepDiverged, match=r"fit: outer step 2 .*SGD") as caught:
        fit(cfg, {"theta": theta}, tasks, optimizer=opt, steps=5, progress=False)
    torch.testing.assert_close(
        caught.value.trained.meta["theta"], before.meta["theta"], rtol=1e-12, atol=1e-14
    )
    assert caught.value.trained.history.series("outer_loss")[0] == [0, 1, 2]


@pytest.mark.parametrize(
    ("returned", "pattern"),
    [
        ("accuracy", r"fit: evaluate must return a mapping \{name: number\}, got 'accuracy'"),
        ({"acc": "high"}, r"fit: evaluate returned a non-number for 'acc': 'high'"),
        ({"acc": [1.0, 2.0]}, r"fit: evaluate returned a non-number for 'acc': \[1.0, 2.0\]"),
        ({"acc": None}, r"fit: evaluate returned a non-number for 'acc': None"),
    ],
)
def test_evaluate_returning_a_non_number_is_a_type_error_naming_evaluate(
    returned: Any, pattern: str
) -> None:
    cfg, task = _config(), {k: v[0] for k, v in _tasks(1, 0).items()}
    meta = {"theta": torch.zeros(3, dtype=F64)}
    with pytest.raises(TypeError, match=pattern):
        fit(
            cfg,
            meta,
            lambda s: task,
            optimizer=solvers.SGD(0.1),
            steps=2,
            evaluate=lambda m: returned,
            progress=False,
        )


def test_evaluate_may_return_0d_arrays_and_numpy_scalars() -> None:
    cfg, task = _config(), {k: v[0] for k, v in _tasks(1, 0).items()}
    out = fit(
        cfg,
        {"theta": torch.zeros(3, dtype=F64)},
        lambda s: task,
        optimizer=solvers.SGD(0.1),
        steps=1,
        evaluate=lambda m: {"norm": m["theta"].norm(), "n": np.int64(3), "one": torch.ones(1)},
        progress=False,
    )
    assert out.history.series("n") == ([1], [3.0])  # every=0: after the last step only
    assert out.history.last("one") == 1.0


@pytest.mark.parametrize("progress", [False, True])
def test_ctrl_c_during_fit_hands_back_the_history_and_the_last_meta(progress: bool) -> None:
    """KeyboardInterrupt raised from ``tasks`` at step 3: FitInterrupted (a KeyboardInterrupt)
    carries the three recorded steps and the meta-parameters after three updates, equal to a
    run of ``steps=3``."""
    cfg, pool = _config(), _tasks(4, 5)

    def tasks(step: int) -> Batch:
        if step == 3:
            raise KeyboardInterrupt
        return Batch(pool)

    meta0 = {"theta": torch.zeros(3, dtype=F64)}
    with pytest.raises(fit_module.FitInterrupted) as caught:
        fit(cfg, meta0, tasks, optimizer=solvers.Adam(0.05), steps=10, progress=progress)
    err = caught.value
    assert isinstance(err, KeyboardInterrupt) and err.step == 3
    assert "fit: interrupted at outer step 3 of 10" in str(err)
    three = fit(
        cfg, meta0, lambda s: Batch(pool), optimizer=solvers.Adam(0.05), steps=3, progress=False
    )
    torch.testing.assert_close(err.trained.meta["theta"], three.meta["theta"], rtol=0, atol=0)
    assert err.trained.history.series("outer_loss") == three.history.series("outer_loss")


def test_a_hypergradient_failing_after_the_meta_parameters_blew_up_names_the_outer_steps() -> None:
    """SGD with lr = 1e308 from θ = 1 (g ≈ (0.16, 0.39, 0.73)) leaves θ finite but ≈ −7e307:
    the next hypergradient's inner loop overflows. The error is still hypergrad's RuntimeError,
    now saying that it happened at outer step 1, after the meta-parameters grew from 1 to
    7.32e307 under SGD, and what to change in the outer optimizer."""
    cfg, pool = _config(), _tasks(4, 4)
    meta = {"theta": torch.ones(3, dtype=F64)}
    with pytest.raises(RuntimeError) as caught:
        fit(cfg, meta, lambda s: Batch(pool), optimizer=solvers.SGD(lr=1e308), steps=5)
    message = str(caught.value)
    assert message.startswith("fit: outer step 1: hypergrad (task 0): the inner loop produced")
    assert "|meta-parameter| grew from 1 to 7.32e+307 after 1 outer step of SGD" in message
    assert "SGD(lr=1e+308" in message and "lower its learning rate" in message
    assert isinstance(caught.value.__cause__, RuntimeError)  # hypergrad's own error, chained


# ------------------------------------------------------------------ fit's compiled step (JAX)


def _jax_setup() -> tuple[Any, recipes.Config, Any]:
    """``_problem`` written with jax.numpy, float64 on for the test (restored by the caller)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    calls = [0]  # Python executions of the outer loss's body (once per trace when compiled)

    def inner(w: Any, m: Any, t: Any) -> Any:
        return 0.5 * ((w - m["theta"] * t["x"]) ** 2).sum() + 0.5 * (w**2).sum()

    def outer(w: Any, m: Any, t: Any) -> Any:
        calls[0] += 1
        return 0.5 * ((w - t["y"]) ** 2).sum()

    problem = Problem(init=lambda m, t: jnp.zeros_like(t["x"]), inner_loss=inner, outer_loss=outer)
    cfg = recipes.Config(problem, solvers.GradientDescent(lr=0.5, steps=3), Unrolled())
    return jnp, cfg, calls


@pytest.fixture
def x64() -> Any:
    jax = pytest.importorskip("jax")
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


@pytest.mark.jax
@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("optimizer", [solvers.SGD(lr=0.3, momentum=0.5), solvers.Adam(lr=0.05)])
def test_compiled_fit_on_jax_equals_the_eager_fit(optimizer: Any) -> None:
    """fit's compiled step (hypergradient + update, one jax.jit program) and compiled=False: the
    same meta-parameters and outer losses over 6 steps of a changing meta-batch (same float64
    arithmetic, fused by XLA: measured ≤ 2e-16 relative; asserted 1e-12, the module's bound).
    The compiled run traces the outer loss once per kind of batch; the eager one runs it on
    every step (the opt-out really runs eagerly)."""
    jnp, cfg, calls = _jax_setup()
    pool = {k: jnp.asarray(v.numpy()) for k, v in _tasks(12, 2).items()}

    def tasks(step: int) -> Batch:
        idx = jnp.arange(3) + 3 * (step % 4)
        return Batch({k: v[idx] for k, v in pool.items()})

    meta0 = {"theta": jnp.zeros(3)}
    runs = {}
    for compiled in (True, False):
        calls[0] = 0
        out = fit(cfg, meta0, tasks, optimizer=optimizer, steps=6, progress=False,
                  compiled=compiled)  # fmt: skip
        runs[compiled] = (out, calls[0])
    (fast, fast_calls), (slow, slow_calls) = runs[True], runs[False]
    np.testing.assert_allclose(
        np.asarray(fast.meta["theta"]), np.asarray(slow.meta["theta"]), rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(
        fast.history.series("outer_loss")[1], slow.history.series("outer_loss")[1], rtol=1e-12
    )
    assert float(jnp.abs(slow.meta["theta"]).sum()) > 0.1  # it moved
    assert fast_calls <= 2 < 6 <= slow_calls, (fast_calls, slow_calls)


@pytest.mark.jax
@pytest.mark.usefixtures("x64")
def test_compiled_fit_on_jax_keeps_the_host_checks() -> None:
    """A non-finite result of the compiled step is recomputed eagerly, whose host checks name
    the task and the cause (task inputs of 1e200 at outer step 2: the outer loss overflows to
    inf at finite inner parameters, a ValueError as from hypergrad); an exploding update
    raises OuterStepDiverged at step 0 with the initial meta-parameters, as eagerly."""
    jnp, cfg, _ = _jax_setup()
    pool = {k: jnp.asarray(v.numpy()) for k, v in _tasks(4, 4).items()}
    bad = {"x": pool["x"] * 1e200, "y": pool["y"]}
    meta = {"theta": jnp.full(3, 10.0)}
    with pytest.raises(ValueError, match=r"hypergrad \(task 0\): Problem.outer_loss returned inf"):
        fit(cfg, meta, lambda s: Batch(bad if s == 2 else pool), optimizer=solvers.SGD(lr=1e-3),
            steps=4, progress=False)  # fmt: skip
    with pytest.raises(fit_module.OuterStepDiverged) as diverged:
        fit(cfg, meta, lambda s: Batch(pool), optimizer=solvers.SGD(lr=1e308), steps=5,
            progress=False)  # fmt: skip
    assert diverged.value.step == 0
    assert np.array_equal(np.asarray(diverged.value.trained.meta["theta"]), np.full(3, 10.0))


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_fit_callbacks_keep_the_diagnostics_of_steps_that_run_eagerly(framework: str) -> None:
    # Before: fit's step wrapper rebuilt every Result with an empty Info, so the callback of an
    # Implicit run saw res.info.linear None (on torch always; on JAX for any step it cannot
    # compile), and examples reading CG iterations from it crashed.
    from bilevel import Implicit
    from bilevel.recipes import Config

    if framework == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        xp: Any = jax.numpy
    else:
        xp = torch
    problem = Problem(
        init=lambda m, t: m * 1.0,
        inner_loss=lambda w, m, t: ((w - t) ** 2).sum() + ((w - m) ** 2).sum(),
        outer_loss=lambda w, m, t: (w**2).sum(),
    )
    config = Config(problem, solvers.GradientDescent(lr=0.25, steps=30), Implicit(solvers.CG()))
    seen: list[Any] = []
    fit(
        config,
        xp.ones(3, dtype=xp.float64),
        lambda step: xp.zeros(3, dtype=xp.float64),
        optimizer=solvers.SGD(0.1),
        steps=2,
        callback=lambda step, meta, res: seen.append(res.info),
        progress=False,
    )
    assert [info.linear is not None and info.linear.converged for info in seen] == [True, True]
    assert all(info.stationarity is not None for info in seen)
