"""``hypergrad``: one call for one task or a vectorised meta-batch, any strategy, any solver."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bilevel import tree
from bilevel.backends import backend_for
from bilevel.backends.base import Backend, Tree
from bilevel.diagnostics import info_of, issues_of, raise_nonfinite, warn, worst
from bilevel.problem import Problem
from bilevel.result import Info, Result
from bilevel.strategies._common import first_nonfinite_step, solve_forward, vectorizable
from bilevel.strategies.base import Outcome, ReverseModeOfMap, Strategy, TwoPhase

__all__ = ["Batch", "hypergrad", "solve"]


@dataclass(frozen=True)
class Batch:
    """A meta-batch of tasks: every array leaf of ``tasks`` carries a leading task axis.

    Non-array leaves (ints, strings) are shared by all tasks.

    Example:
        >>> import torch
        >>> from bilevel import Batch
        >>> Batch({"x": torch.zeros(25, 10, 1), "y": torch.zeros(25, 10, 1)}).size()
        25
    """

    tasks: Tree

    def __post_init__(self) -> None:
        flat, treedef = tree.flatten(self.tasks)
        if any(isinstance(leaf, Batch) for leaf in flat):
            raise TypeError(
                f"Batch: the tasks {treedef} contain a Batch; a Batch is one level of tasks, "
                "stacked along axis 0: pass Batch(stacked_tasks), not Batch(Batch(...)) or a "
                "Batch inside a task"
            )

    def size(self) -> int:
        """The number of tasks (the common leading dimension of the array leaves).

        Raises:
            TypeError: for a NumPy array leaf (convert it to the backend's arrays).
            ValueError: if there are no array leaves, a 0-d leaf, or leading dimensions differ.
        """
        check_no_numpy(self.tasks, "Batch")
        sizes = {
            int(leaf.shape[0]) if len(leaf.shape) else -1
            for leaf in tree.leaves(self.tasks)
            # a NumPy scalar (np.float64(0.5)) is a number, shared by every task like a float
            if hasattr(leaf, "shape") and type(leaf).__module__ != "numpy"
        }
        if len(sizes) != 1 or -1 in sizes:
            raise ValueError(
                f"Batch: every array leaf of the tasks needs the same leading task axis, found "
                f"leading sizes {sorted(s for s in sizes if s >= 0)}"
                f"{' and 0-d leaves' if -1 in sizes else ''} in {tree.structure(self.tasks)}; "
                "stack the tasks along axis 0"
            )
        n = sizes.pop()
        if n < 1:
            raise ValueError("Batch: the task axis is empty; pass at least one task")
        return n

    def task(self, i: int) -> Tree:
        """Task ``i`` of the batch."""
        return tree.index(self.tasks, i)


def check_no_numpy(data: Tree, who: str) -> None:
    """Refuse NumPy arrays in task data: a backend cannot map or differentiate them, and a
    ``Batch`` would count them as tasks but share them whole.

    Raises:
        TypeError: naming the leaf and the conversion to make.
    """
    flat, treedef = tree.flatten(data)
    for i, leaf in enumerate(flat):
        if type(leaf).__module__ == "numpy" and hasattr(leaf, "shape") and leaf.ndim > 0:
            raise TypeError(
                f"{who}: task leaf {i} of {treedef} is a NumPy array of shape {leaf.shape}; "
                "task data must be arrays of the backend: convert it with torch.as_tensor(x) "
                "or jax.numpy.asarray(x)"
            )


def _check_task(data: Tree, meta: Tree, backend: Backend, who: str) -> None:
    """Task data the backend can map: no nested Batch, no NumPy arrays, one device."""
    flat, treedef = tree.flatten(data)
    if any(isinstance(leaf, Batch) for leaf in flat):
        raise TypeError(
            f"{who}: the task {treedef} contains a Batch; pass the Batch itself as the task "
            "(one level of stacked tasks), not inside another structure"
        )
    check_no_numpy(data, who)
    where: dict[str, str] = {}
    for name, t in (("meta", meta), ("task", data)):
        for i, leaf in enumerate(tree.leaves(t)):
            device = backend.device(leaf) if backend.owns(leaf) else None
            if device is not None:
                where.setdefault(device, f"{name} leaf {i}")
    if len(where) > 1:
        found = ", ".join(f"{v} on {k}" for k, v in where.items())
        raise TypeError(
            f"{who}: the meta-parameters and the task live on different devices ({found}); "
            "move them to one device first, e.g. with .to(device) on every leaf"
        )


def _guarded(
    who: str, backend: Backend, meta: Tree, data: Tree, run: Callable[[Tree, Tree], Any]
) -> Any:
    """``run(meta, data)`` on private copies of the caller's arrays, with no tape recorded by
    the caller: a function that changes an input in place cannot reach the caller's arrays, and
    is refused (the copies' version counters, or the framework's own refusal inside a
    transform, tell)."""
    caller = (meta, data)
    before = backend.versions(caller)
    own = backend.isolate(backend.untape(caller))
    fresh = backend.versions(own)
    try:
        out = run(*own)
    except RuntimeError as err:
        if backend.is_in_place_error(err):
            raise _in_place(who) from err
        raise
    changed = [
        i
        for i, (a, b, c, d) in enumerate(
            zip(before, backend.versions(caller), fresh, backend.versions(own), strict=True)
        )
        if a != b or c != d
    ]
    if changed:
        meta_n = len(tree.leaves(meta))
        what = [f"meta leaf {i}" if i < meta_n else f"task leaf {i - meta_n}" for i in changed]
        raise _in_place(who, ", ".join(what))
    return out


def _in_place(who: str, what: str = "an input") -> ValueError:
    return ValueError(
        f"{who}: a function of the Problem or the solver changed {what} in place "
        "(x.mul_(...), x += ..., x[i] = ...); bilevel never changes the caller's arrays and "
        "refuses functions that do, since the result would not be a function of the inputs: "
        "write the operation out of place (x = x * 2)"
    )


def _task_axes(data: Tree, backend: Backend) -> Tree:
    """``vmap`` in_dims for a batch: axis 0 of every array leaf; other leaves are shared."""
    return tree.map(lambda x: 0 if backend.owns(x) else None, data)


def _check_problem(problem: object, who: str) -> None:
    if not isinstance(problem, Problem):
        raise TypeError(
            f"{who}: problem must be a bilevel.Problem, got {type(problem).__name__}; "
            "build one with Problem(init=..., inner_loss=..., outer_loss=...)"
        )


def _check_inputs(problem: object, strategy: object, meta: Tree, backend: Backend) -> None:
    _check_problem(problem, "hypergrad")
    if isinstance(strategy, type):
        raise TypeError(
            f"hypergrad: strategy={strategy.__name__} is a class; pass an instance, e.g. "
            f"strategy={strategy.__name__}()"
        )
    if not isinstance(strategy, Strategy):
        raise TypeError(
            f"hypergrad: strategy must be a strategy such as Unrolled(), Truncated(T), "
            f"FirstOrder() or Implicit(solvers.CG()), got {strategy!r}"
        )
    flat, treedef = tree.flatten(meta)
    if not flat:
        raise TypeError("hypergrad: meta has no array leaves; pass a pytree of tensors")
    wrap = "jax.numpy.asarray(x, dtype=float)" if backend.name == "jax" else "torch.tensor(x)"
    for i, leaf in enumerate(flat):
        if isinstance(leaf, Batch):
            raise TypeError(
                f"hypergrad: meta leaf {i} of {treedef} is a Batch; the meta-parameters are "
                "shared by every task, so only the task may be a Batch: pass the meta-parameters "
                "unwrapped and the tasks as Batch(stacked_task)"
            )
        if not backend.owns(leaf):
            raise TypeError(
                f"hypergrad: meta leaf {i} of {treedef} is a {type(leaf).__name__}, not a "
                f"{backend.name} array; every meta-parameter must be an array that can carry a "
                f"gradient (wrap numbers with {wrap})"
            )
        if not backend.is_differentiable(leaf):
            raise TypeError(
                f"hypergrad: meta leaf {i} of {treedef} has dtype {leaf.dtype}, which cannot "
                "carry a gradient; convert it to a floating dtype (e.g. .float() or .double())"
            )


def hypergrad(
    problem: Problem, solver: Any, meta: Tree, task: Tree, *, strategy: Strategy
) -> Result:
    r"""The hypergradient of ``problem`` at ``meta`` for one task or a :class:`Batch`.

    .. math:: \text{value} = F(φ_K, θ, τ), \qquad \text{grad} ≈ \frac{dF}{dθ}

    where the exact meaning of ``grad`` is the strategy's (see ``docs/strategies.md``). For a
    :class:`Batch`, value and grad are means over tasks; tasks are mapped with the backend's
    ``vmap`` when the strategy and solver allow it and looped otherwise, with the same result.

    Results are not recorded on torch's autograd tape (``requires_grad`` meta-parameters such
    as ``nn.Parameter`` are read as values), so a result never keeps the unrolled graph alive;
    ``hypergrad`` still composes with the backend's functional transforms (``torch.func``).

    ``hypergrad`` never compiles by itself. On JAX, ``jax.jit`` around a function of yours that
    calls it compiles the whole computation for every strategy but ``Implicit`` (whose linear
    solvers stop on a host-side test: a TypeError inside ``jax.jit``); the host-side checks
    (non-finite values, warnings) are skipped while traced. :func:`bilevel.trainer.fit` compiles
    its whole step this way.

    Args:
        problem: the :class:`Problem`.
        solver: the inner solver (``solvers.GradientDescent``, ``Optimizer``, ``UpdateRule``,
            ``Scipy`` or any object with the same interface).
        meta: the meta-parameters θ, a pytree of floating arrays.
        task: one task's data (any pytree), or a :class:`Batch` of tasks.
        strategy: how to differentiate (``Unrolled()``, ``Truncated(T)``, ``FirstOrder()``,
            ``Implicit(linear_solver)``, ``ForwardMode()``).

    Returns:
        A :class:`Result` with ``value``, ``grad`` (structured like ``meta``), ``params`` and
        ``info``.

    Raises:
        TypeError: for a wrong problem, strategy or solver, meta leaves that cannot carry a
            gradient, non-scalar losses, or arrays of two frameworks.
        ValueError: for a non-finite outer loss or a malformed batch.
        RuntimeError: if the inner loop or the hypergradient becomes non-finite.

    Example:
        >>> import torch
        >>> from bilevel import solvers
        >>> from bilevel import Batch, Problem, hypergrad, Unrolled
        >>> p = Problem(init=lambda m, t: m,
        ...             inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2,
        ...             outer_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2)
        >>> res = hypergrad(p, solvers.GradientDescent(lr=0.5, steps=1), torch.tensor([1.0]),
        ...                 Batch(torch.tensor([[0.0], [2.0]])), strategy=Unrolled())
        >>> res.value.item(), res.grad.tolist(), res.params.shape
        (0.125, [0.0], torch.Size([2, 1]))
    """
    data = task.tasks if isinstance(task, Batch) else task
    backend = backend_for(meta, data, what="hypergrad")
    _check_inputs(problem, strategy, meta, backend)
    _check_task(data, meta, backend, "hypergrad")
    strategy.validate(solver)
    batched = isinstance(task, Batch)
    res = _guarded(
        "hypergrad",
        backend,
        meta,
        data,
        lambda m, d: _hypergrad(problem, solver, m, d, batched, strategy, backend),
    )
    # Results carry no autograd history (a loss closing over a module that requires grad would
    # otherwise keep its graph alive) and share no memory with the caller's arrays.
    arrays = (res.value, res.grad, res.params, res.task_values)
    value, grad, params, values = backend.unalias(backend.untape(arrays), meta, data)
    return Result(value, grad, params, res.info, res.task_info, values)


# Warnings point at the line that called hypergrad: warnings.warn is called in diagnostics.warn,
# from _hypergrad, from the lambda that _guarded runs, from _guarded, from hypergrad.
_CALLER = 6


def _hypergrad(
    problem: Problem,
    solver: Any,
    meta: Tree,
    data: Tree,
    batched: bool,
    strategy: Strategy,
    backend: Backend,
) -> Result:
    def single(p: Problem, m: Tree, t: Tree) -> tuple[Any, ...]:
        return tuple(strategy.compute(p, solver, m, t, backend))

    def one_of(p: Problem) -> Callable[[Tree, Tree], tuple[Any, ...]]:
        return lambda m, t: single(p, m, t)

    if not batched:
        out = Outcome(*single(problem, meta, data))
        raise_nonfinite(
            out.value,
            out.grad,
            out.params,
            lambda: first_nonfinite_step(problem, solver, meta, data, backend),
            strategy,
            backend,
        )
        info = info_of(out.diag, strategy, backend)
        warn([issues_of(info, out.diag.get("stationarity_tol"))], stacklevel=_CALLER)
        return Result(out.value, out.grad, out.params, info, (info,), backend.stack([out.value]))

    batch = Batch(data)
    n = batch.size()
    mean_grad: Tree = None  # set when the gradient of the batch mean is taken directly
    vmapped_one: Any = None  # then this recomputes the per-task ones, on the failure path only
    if strategy.vectorizable(solver):
        dims = _task_axes(data, backend)

        if isinstance(strategy, ReverseModeOfMap):
            reverse = strategy

            def grad_of_mean(p: Problem, m: Tree, t: Tree) -> Any:
                return _grad_of_mean(reverse, p, solver, m, t, _task_axes(t, backend), backend)

            values, mean_grad, params, diags = grad_of_mean(problem, meta, data)
            grads = None
            vmapped_one = backend.map_tasks(one_of(problem), in_dims=(None, dims))
        else:

            def vmapped(p: Problem, m: Tree, t: Tree) -> Any:
                return backend.map_tasks(one_of(p), in_dims=(None, _task_axes(t, backend)))(m, t)

            values, grads, params, diags = vmapped(problem, meta, data)
        task_diags = [tree.index(diags, i) for i in range(n)] if diags else [{}] * n
    else:
        if isinstance(strategy, TwoPhase) and vectorizable(solver):  # vmap the inner solves
            dims = _task_axes(data, backend)

            def inner(t: Tree) -> tuple[Tree, dict[str, Any]]:
                return strategy.forward(problem, solver, meta, t, backend)

            solved, found = backend.map_tasks(inner, in_dims=(dims,))(data)
            outs = strategy.backward_batch(
                problem, solver, meta, data, dims, solved, found, backend
            )
        else:
            outs = [
                strategy.compute(problem, solver, meta, batch.task(i), backend) for i in range(n)
            ]
        values = backend.stack([o.value for o in outs])
        grads = tree.map(lambda *gs: backend.stack(gs), *(o.grad for o in outs))
        params = tree.map(lambda *ps: backend.stack(ps), *(o.params for o in outs))
        task_diags = [o.diag for o in outs]
    # One host synchronisation for the whole batch; per-task checks only on the failure path.
    value = values.mean(0)
    finite = backend.all_finite((value, values, grads, mean_grad, params))
    if backend.host_bool(finite) is False:
        if grads is None:  # find the task: its own hypergradient, on the failure path only
            values, grads, params, _ = vmapped_one(meta, data)
        for i in range(n):
            raise_nonfinite(
                values[i],
                tree.index(grads, i),
                tree.index(params, i),
                lambda i=i: first_nonfinite_step(problem, solver, meta, batch.task(i), backend),
                strategy,
                backend,
                where=f" (task {i})",
            )
        raise RuntimeError(  # every task is finite, their mean is not: it overflowed
            f"hypergrad: every task's outer value and hypergradient are finite but their mean "
            f"over the batch of {n} is not (overflow) with {strategy!r}; rescale the outer loss"
        )
    plain = Info(strategy=repr(strategy))
    infos = tuple(info_of(d, strategy, backend) if d else plain for d in task_diags)
    warn(
        [issues_of(i, d.get("stationarity_tol")) for i, d in zip(infos, task_diags, strict=True)],
        stacklevel=_CALLER,
    )
    grad = mean_grad if mean_grad is not None else tree.map(lambda g: g.mean(0), grads)
    return Result(value, grad, params, worst(infos), infos, values)


def _grad_of_mean(
    strategy: ReverseModeOfMap,
    problem: Problem,
    solver: Any,
    meta: Tree,
    data: Tree,
    dims: Tree,
    backend: Backend,
) -> tuple[Any, Tree, Tree, dict[str, Any]]:
    """``(values, ∇ mean(values), params, diags)`` of the strategy's map over the batch, with
    ``grad`` and ``vmap`` composed as the backend knows to be exact."""

    def per_task(m: Tree, t: Tree) -> tuple[Any, tuple[Tree, dict[str, Any]]]:
        fn, found = strategy.map_with_aux(problem, solver, meta, t, backend)
        value, (params, diag) = fn(m)
        return value, (params, {**found, **diag})

    values, grad, (params, diags) = backend.batch_value_and_grad(per_task, dims)(meta, data)
    return values, grad, params, diags


def solve(problem: Problem, solver: Any, meta: Tree, task: Tree) -> Tree:
    """The inner solution φ_K at ``meta`` for one task or a :class:`Batch`, with no hypergradient.

    What evaluation needs: adapted parameters on new tasks. A :class:`Batch` is vectorised with
    the backend's ``vmap`` when the solver allows it, and the result has a leading task axis.
    Unlike :func:`hypergrad` it does not raise on a non-finite inner solution: a diverging task
    comes back non-finite, for the caller to count and exclude.

    Args:
        problem: the :class:`Problem` (``outer_loss`` is not used).
        solver: the inner solver.
        meta: the meta-parameters θ.
        task: one task, or a :class:`Batch`.

    Returns:
        The inner parameters, structured as ``init`` returns them.

    Raises:
        TypeError: for a wrong problem or solver, or arrays of two frameworks.

    Example:
        >>> import torch
        >>> from bilevel import solvers
        >>> from bilevel import Batch, Problem, solve
        >>> p = Problem(init=lambda m, t: m,
        ...             inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2,
        ...             outer_loss=lambda w, m, t: (w**2).sum())
        >>> solve(p, solvers.GradientDescent(lr=0.5, steps=1), torch.tensor([0.0]),
        ...       Batch(torch.tensor([[2.0], [4.0]]))).tolist()
        [[1.0], [2.0]]
    """
    data = task.tasks if isinstance(task, Batch) else task
    backend = backend_for(meta, data, what="solve")
    _check_problem(problem, "solve")
    _check_task(data, meta, backend, "solve")

    def run(m: Tree, d: Tree) -> Tree:
        def one(t: Tree) -> Tree:
            return solve_forward(problem, solver, m, t, backend)[0]

        if not isinstance(task, Batch):
            return one(d)
        batch = Batch(d)
        n = batch.size()
        if vectorizable(solver):
            return backend.map_tasks(one, in_dims=(_task_axes(d, backend),))(d)
        return tree.map(lambda *ps: backend.stack(ps), *(one(batch.task(i)) for i in range(n)))

    params = _guarded("solve", backend, meta, data, run)
    return backend.unalias(backend.untape(params), meta, data)
