"""The small interfaces that inner solvers and linear solvers implement, and the data they pass.

This module depends on nothing but :mod:`bilevel.backends` (for the :class:`Backend` type), so the
``solvers`` package can implement these interfaces without importing the bilevel core.

- :class:`IterativeSolver`: a differentiable inner loop ``state -> state`` run for ``steps``
  steps (``GradientDescent``, ``Optimizer``, ``UpdateRule``); every strategy applies.
- :class:`BlackBoxSolver`: returns an approximate minimiser without a differentiable path
  (``Scipy``); only ``FirstOrder`` and ``Implicit`` apply.
- :class:`LinearSolver`: solves ``A x = b`` for a :class:`LinearOperator` given by its matvec.
- :class:`SemiGradient`: an inner loss whose gradient holds its targets fixed (TD learning);
  :class:`InnerObjective` is the one place an inner gradient is taken, so every solver and
  strategy sees the semi-gradient.
- :class:`PerStep`: a function that also receives the inner step index (a fresh minibatch per
  inner step, a per-step learning rate); the inner-loop driver passes the step through the
  :class:`InnerObjective`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from bilevel.backends.base import Backend, Tree
from bilevel.validate import callable_with

__all__ = [
    "BatchLinearSolver",
    "BlackBoxSolver",
    "InnerObjective",
    "IterativeSolver",
    "LinearInfo",
    "LinearOperator",
    "LinearSolver",
    "PerStep",
    "SemiGradient",
    "SolverInfo",
]


@dataclass(frozen=True)
class SemiGradient:
    r"""An inner loss whose gradient treats its targets as constants: TD-style semi-gradients.

    .. math:: f(φ) = \ell(φ, φ, θ, τ), \qquad
              \mathrm{grad}(φ) = ∂_1 \ell(φ, \bar φ, θ, τ)\big|_{\bar φ = φ}

    The second argument ``targets`` receives the same inner parameters as the first; only the
    *inner* gradient holds it fixed. Every strategy still differentiates the whole inner loop,
    targets included, so the hypergradient stays exact. Do not write ``.detach()`` (or
    ``stop_gradient``) on the parameters inside an inner loss instead: under ``torch.func`` and
    JAX that also cuts the outer derivative through the earlier inner steps, and a hypergradient
    through more than one step silently loses terms. The semi-gradient is not the gradient of
    any loss in general, so ``Implicit`` treats its Jacobian as non-symmetric (use ``GMRES``,
    ``Neumann`` or ``Direct``), and ``solvers.Scipy`` refuses it.

    Args:
        loss: ``(params, targets, meta, task) -> scalar``.

    Raises:
        TypeError: if ``loss`` does not take four positional arguments.

    Example:
        >>> import torch
        >>> from bilevel.protocols import SemiGradient
        >>> td = SemiGradient(lambda w, target, m, t: ((1 + 0.5 * target - w) ** 2).sum())
        >>> td(torch.tensor(1.0), None, None)  # the value: ℓ(φ, φ)
        tensor(0.2500)
    """

    loss: Callable[[Tree, Tree, Tree, Tree], Any]

    def __post_init__(self) -> None:
        callable_with(
            "SemiGradient", "loss", self.loss, 4, "(params, targets, meta, task) -> scalar"
        )

    def __call__(self, params: Tree, meta: Tree, task: Tree) -> Any:
        return self.loss(params, params, meta, task)


@dataclass(frozen=True)
class PerStep:
    r"""A function that also receives the index of the inner step, as its last argument.

    .. math:: φ_{t+1} = \mathrm{step}_t(φ_t, θ, τ), \qquad t = 0, …, K − 1

    Three uses, one rule (the step comes last):

    - an inner loss ``PerStep(loss)``, ``loss(params, meta, task, step)``: step t descends
      ``f_t``, e.g. on a fresh minibatch ``task["x"][step]`` of a task with a leading step
      axis (``SemiGradient(PerStep(loss))`` gets ``(params, targets, meta, task, step)``);
    - a solver hyperparameter, ``GradientDescent(lr=PerStep(fn))``, ``fn(meta, step)``: a
      learned rate per step (MAML++);
    - an update rule, ``UpdateRule(PerStep(rule))``, ``rule(params, meta, task, step)``.

    The step is the driver's loop index: a Python ``int`` on torch (and eagerly on JAX), a 0-d
    integer array where JAX compiles the inner step, so index arrays with it
    (``x[step]``) rather than branching on it. Every strategy that runs the inner steps passes
    it (``Unrolled``, ``Truncated``, ``ForwardMode``, ``FirstOrder``). ``Implicit``
    differentiates a fixed point, which has no step, and ``solvers.Scipy`` runs no numbered
    steps: both refuse a ``PerStep``.

    Args:
        fn: the function, taking the step after its usual arguments.

    Raises:
        TypeError: if ``fn`` is not callable, or is itself a ``PerStep`` or a ``SemiGradient``
            (write ``SemiGradient(PerStep(fn))``).

    Example:
        >>> import torch
        >>> from bilevel.protocols import PerStep
        >>> loss = PerStep(lambda w, m, task, step: ((w - task[step]) ** 2).sum())
        >>> loss(torch.tensor(1.0), None, torch.tensor([1.0, 3.0]), 1)  # minibatch 1
        tensor(4.)
    """

    fn: Callable[..., Any]

    def __post_init__(self) -> None:
        if isinstance(self.fn, PerStep | SemiGradient):
            raise TypeError(
                f"PerStep: fn is a {type(self.fn).__name__}; a semi-gradient that sees the step "
                "is SemiGradient(PerStep(fn)) with fn(params, targets, meta, task, step)"
            )
        if not callable(self.fn):
            raise TypeError(
                f"PerStep: fn must be a function taking the step index last, e.g. "
                f"(params, meta, task, step) -> scalar, got {type(self.fn).__name__}"
            )

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def _per_step_loss(fn: Callable[..., Any]) -> bool:
    """Whether the inner loss ``fn`` takes the step: ``PerStep(...)`` or
    ``SemiGradient(PerStep(...))``."""
    return isinstance(fn.loss if isinstance(fn, SemiGradient) else fn, PerStep)


@dataclass(frozen=True)
class InnerObjective:
    """What an inner solver sees of one task: the inner loss with ``meta`` and ``task`` bound.

    Attributes:
        loss_fn: ``(params, meta, task) -> scalar`` or ``None`` when the problem has no inner loss.
        meta: the meta-parameters (traced when a strategy differentiates through the solver).
        task: the task's data.
        backend: the AD backend.
        step: the index of the inner step being taken (an ``int`` or a 0-d integer array), set
            by the driver of the inner loop (:meth:`at`) and passed to :class:`PerStep` losses,
            rules and hyperparameters; ``None`` outside the loop (``Implicit``'s stationarity, a
            black-box solver), where a ``PerStep`` is refused.
    """

    loss_fn: Callable[[Tree, Tree, Tree], Any] | None
    meta: Tree
    task: Tree
    backend: Backend
    step: Any = None

    def at(self, step: Any) -> InnerObjective:
        """This objective at inner step ``step``."""
        return replace(self, step=step)

    def step_index(self, what: str) -> Any:
        """The current step, for the :class:`PerStep` named by ``what``.

        Raises:
            TypeError: outside the inner loop (``step`` is ``None``).
        """
        if self.step is None:
            raise TypeError(
                f"{what} is a PerStep (it takes the inner step index), but it is evaluated here "
                "outside the inner loop, where there is no step: Implicit(...) differentiates a "
                "fixed point, which has no step, and a black-box solver runs no numbered steps; "
                "use Unrolled(), Truncated(T), ForwardMode() or FirstOrder() with an iterative "
                "solver, or a function without the step"
            )
        return self.step

    def hyper(self, value: Any, what: str) -> Any:
        """A solver hyperparameter at this θ and step: a number as it is, ``value(meta)`` for
        a function of the meta-parameters, ``value(meta, step)`` for a :class:`PerStep`.

        Evaluated inside the solver's step, so every strategy that differentiates the steps
        differentiates the hyperparameter too.
        """
        if isinstance(value, PerStep):
            return value(self.meta, self.step_index(what))
        if callable(value):
            return value(self.meta)
        return value

    def _arguments(self, fn: Callable[..., Any], params: Tree) -> tuple[Any, ...]:
        """The loss's arguments: targets for a :class:`SemiGradient`, the step for a
        :class:`PerStep`."""
        head = (params, params) if isinstance(fn, SemiGradient) else (params,)
        tail = (self.step_index("Problem.inner_loss"),) if _per_step_loss(fn) else ()
        return (*head, self.meta, self.task, *tail)

    def loss(self, params: Tree) -> Any:
        """The inner loss ``f(params, meta, task)``, checked to be a scalar.

        Raises:
            TypeError: if the problem has no inner loss, or the loss is not a floating 0-d array.
        """
        fn = _require(self.loss_fn)
        return _scalar_loss(fn)(*self._arguments(fn, params))

    def value_and_grad(self, params: Tree) -> tuple[Any, Tree]:
        """``(f(params), ∇_params f(params))`` through the backend; for a :class:`SemiGradient`
        loss the gradient holds the targets at ``params`` (constants for this gradient only).

        Nothing is compiled here: on JAX an eager call runs operation by operation, and
        ``jax.jit`` around the caller's function (or :func:`bilevel.trainer.fit`) compiles it.
        """
        fn = _require(self.loss_fn)
        result: tuple[Any, Tree] = self.backend.value_and_grad(_scalar_loss(fn))(
            *self._arguments(fn, params)
        )
        return result


def _require(fn: Callable[[Tree, Tree, Tree], Any] | None) -> Callable[[Tree, Tree, Tree], Any]:
    if fn is None:
        raise TypeError(
            "this inner solver needs the inner loss, but the Problem has inner_loss=None; "
            "pass Problem(inner_loss=...) or use solvers.UpdateRule, which needs no loss"
        )
    return fn


def check_scalar(value: Any, what: str) -> Any:
    """Return ``value`` if it is a real floating-point 0-d array, else raise a ``TypeError``
    naming ``what`` (the one check of inner and outer losses).

    An integer or boolean value would give a gradient of zero, silently; a complex one has no
    real gradient.

    Raises:
        TypeError: for a non-scalar, or a scalar of a non-floating dtype.
    """
    if getattr(value, "ndim", None) != 0:
        raise TypeError(
            f"{what} must return a 0-d array (a scalar), got {type(value).__name__} with shape "
            f"{getattr(value, 'shape', None)}; reduce it with .mean() or .sum()"
        )
    dtype = str(getattr(value, "dtype", ""))
    if "float" not in dtype or "complex" in dtype:
        raise TypeError(
            f"{what} must return a floating-point scalar, got dtype {dtype}, which has no "
            "gradient to follow (an integer or boolean loss gives a zero hypergradient); compute "
            "it in floating point (torch: .double() or .float(); JAX: .astype(float)), and for "
            "a complex value return its real part or squared modulus"
        )
    return value


def _scalar_loss(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The inner loss ``fn`` with its value checked to be a scalar; for a
    :class:`SemiGradient`, the loss of ``(params, targets, meta, task)``."""

    def loss(*args: Any) -> Any:
        value = (fn.loss if isinstance(fn, SemiGradient) else fn)(*args)
        return check_scalar(value, "Problem.inner_loss")

    return loss


@dataclass(frozen=True)
class SolverInfo:
    """What a black-box solver reports about its run."""

    iterations: int
    success: bool
    message: str = ""


@runtime_checkable
class IterativeSolver(Protocol):
    """A differentiable inner loop: ``state₀ = init(φ₀)``, ``state_{t+1} = step(state_t)``.

    ``params(state)`` reads the inner parameters out of a state. Steps are differentiable
    functions of the state (nothing in place on the differentiable path). Whether they may also
    run under ``vmap`` is declared, not guessed: every solver states ``vectorizable`` (a class
    attribute ``vectorizable = True`` for pure steps), and a solver without it is not an
    ``IterativeSolver``.
    """

    @property
    def steps(self) -> int:
        """The number of steps K."""
        ...

    @property
    def vectorizable(self) -> bool:
        """Whether ``init``, ``step`` and ``params`` may run under ``vmap`` over the tasks of a
        :class:`~bilevel.Batch` (and, on JAX, be traced): ``True`` when they are pure functions
        of their array arguments with no host synchronisation; ``False`` when a step updates
        its state in place (torchopt's transformations do) or reads values back to the host.
        A ``False`` solver runs a Batch task by task, with the same result."""
        ...

    def init(self, params: Tree, objective: InnerObjective) -> Tree:
        """The solver state holding ``params`` before the first step."""
        ...

    def step(self, state: Tree, objective: InnerObjective) -> Tree:
        """One step of the inner loop."""
        ...

    def params(self, state: Tree) -> Tree:
        """The inner parameters held in ``state``."""
        ...


@runtime_checkable
class BlackBoxSolver(Protocol):
    """An inner solver that returns an approximate minimiser with no differentiable path."""

    def solve(self, params: Tree, objective: InnerObjective) -> tuple[Tree, SolverInfo]:
        """Minimise ``objective.loss`` starting from ``params``."""
        ...


@dataclass(frozen=True)
class LinearOperator:
    """A linear map on pytrees, given by its matrix-vector product.

    Attributes:
        matvec: ``v -> A v`` with ``v`` and the result of the same structure.
        symmetric: whether ``A`` is known to be symmetric (a Hessian is; the Jacobian of a
            fixed-point map in general is not). CG and MINRES refuse a non-symmetric operator.
    """

    matvec: Callable[[Tree], Tree]
    symmetric: bool


@dataclass(frozen=True)
class LinearInfo:
    """Diagnostics of one linear solve.

    Every solver of ``bilevel.solvers`` fills all fields; a solver written elsewhere may leave
    the last three at their defaults (meaning: not reported).

    Attributes:
        iterations: matrix-vector products spent in the iteration (the final residual check
            adds one more, and each restart of CG one).
        residual: the relative residual ``‖b − A x‖ / ‖b‖`` of the returned ``x``, recomputed
            from scratch (0 when ``b = 0``), never the solver's own running estimate.
        converged: whether ``residual`` meets the requested tolerance, ``residual ≤ tol`` (and,
            for CG, no negative curvature was met).
        negative_curvature: whether a direction with ``pᵀAp ≤ 0`` was met (CG), or a negative
            eigenvalue seen (Direct on a symmetric operator).
        extra: solver-specific details (e.g. SciPy's exit code).
        tol: the relative residual that counts as converged (the solver's ``tol``; for CG
            ``max(tol, atol/‖b‖)``); 0.0 when not reported.
        attainable: the relative residual the floating-point precision of the solve can be
            expected to reach, ``ε·‖A‖·‖x‖/‖b‖ ≤ ε·κ(A)`` with ``ε`` the machine epsilon of
            ``dtype`` and ``‖A‖`` the solver's estimate (rounding in ``A x`` alone is of this
            size, so no iteration gets the recomputed residual much below it); 0.0 when not
            estimated. ``attainable ≥ tol`` means ``tol`` asks for more than ``dtype`` allows.
        dtype: the floating-point type ``A`` was applied in (``"float32"``, ``"float64"``, …);
            empty when not reported.
    """

    iterations: int
    residual: float
    converged: bool
    negative_curvature: bool = False
    extra: Mapping[str, Any] = field(default_factory=lambda: {})
    tol: float = 0.0
    attainable: float = 0.0
    dtype: str = ""


@runtime_checkable
class LinearSolver(Protocol):
    """Solves ``A x = b`` for a :class:`LinearOperator` ``A`` and a pytree ``b``."""

    def solve(
        self, operator: LinearOperator, b: Tree, *, backend: Backend
    ) -> tuple[Tree, LinearInfo]:
        """Return ``x`` (same structure as ``b``) and diagnostics."""
        ...


@runtime_checkable
class BatchLinearSolver(Protocol):
    """A linear solver that also solves a batch of independent systems at once.

    ``operator.matvec`` and ``b`` carry a leading task axis and the systems are independent
    (block diagonal): every task keeps its own scalars, iterates and stopping test, so the
    result equals solving the tasks one by one, with one host synchronisation per iteration for
    the whole batch instead of one per task.
    """

    def solve_batch(
        self, operator: LinearOperator, b: Tree, *, backend: Backend
    ) -> tuple[Tree, list[LinearInfo]]:
        """Solve ``A_i x_i = b_i`` for every task ``i``; one :class:`LinearInfo` per task."""
        ...
