"""The strategy interface: how the derivative of the outer value with respect to θ is obtained."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

from bilevel.backends.base import Backend, Tree
from bilevel.problem import Problem

__all__ = ["AuxMap", "Outcome", "ReverseModeOfMap", "Strategy", "TwoPhase"]


class Outcome(NamedTuple):
    """One task's raw result: arrays only where the strategy is vectorised.

    ``diag`` may hold ``stationarity`` (0-d array), ``stationarity_tol`` (float), ``linear``
    (:class:`~bilevel.protocols.LinearInfo`) and ``solver``
    (:class:`~bilevel.protocols.SolverInfo`).
    """

    value: Any
    grad: Tree
    params: Tree
    diag: dict[str, Any]


@runtime_checkable
class Strategy(Protocol):
    """A hypergradient strategy: a frozen dataclass whose fields are its hyperparameters."""

    def validate(self, solver: object) -> None:
        """Raise ``TypeError`` if this strategy cannot work with ``solver``."""
        ...

    def vectorizable(self, solver: object) -> bool:
        """Whether one task's computation can run under the backend's ``vmap``."""
        ...

    def compute(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> Outcome:
        """The value, hypergradient, inner solution and diagnostics for one task."""
        ...

    def reference(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> Callable[[Tree], Any]:
        """The scalar map of θ whose derivative at ``meta`` this strategy returns.

        Evaluating it needs no gradient; :func:`bilevel.testing.check_hypergrad` takes finite
        differences of it.
        """
        ...


@runtime_checkable
class TwoPhase(Protocol):
    """A strategy whose work splits into a vectorisable inner solve and a per-task rest.

    For a :class:`~bilevel.Batch` that the strategy cannot ``vmap`` as a whole, ``hypergrad``
    still maps :meth:`forward` over the tasks (when the solver allows it) and hands the batch to
    :meth:`backward_batch` (which may vectorise what it can, or loop :meth:`backward`);
    ``compute`` must equal ``backward(forward(...))``.
    """

    def forward(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> tuple[Tree, dict[str, Any]]:
        """The inner solution and array diagnostics; must run under the backend's ``vmap``."""
        ...

    def backward(
        self,
        problem: Problem,
        solver: Any,
        meta: Tree,
        task: Tree,
        params: Tree,
        found: dict[str, Any],
        backend: Backend,
    ) -> Outcome:
        """The rest of :meth:`Strategy.compute`, from the inner solution ``params``."""
        ...

    def backward_batch(
        self,
        problem: Problem,
        solver: Any,
        meta: Tree,
        tasks: Tree,
        dims: Tree,
        params: Tree,
        found: dict[str, Any],
        backend: Backend,
    ) -> list[Outcome]:
        """:meth:`backward` for each task of a batch (``tasks``, ``params`` and ``found`` with a
        leading task axis; ``dims`` the tasks' ``vmap`` axes), as one :class:`Outcome` per task."""
        ...


AuxMap = Callable[[Tree], tuple[Any, tuple[Tree, dict[str, Any]]]]
"""``θ ↦ (value, (params, diag))``; ``diag`` holds arrays only (it passes through AD transforms)."""


class ReverseModeOfMap:
    """Abstract base of strategies that are reverse-mode derivatives of a map they define.

    A subclass gives :meth:`map_with_aux`: the map ``θ ↦ (value, (φ, diag))`` and the
    diagnostics found while building it (e.g. a black-box solver's report); the hypergradient is
    the reverse-mode gradient of that map at ``meta``, and :meth:`reference` is the map's value.
    Subclasses are final.
    """

    def map_with_aux(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> tuple[AuxMap, dict[str, Any]]:
        """The map whose derivative at ``meta`` is returned, and diagnostics found beforehand."""
        raise NotImplementedError

    def compute(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> Outcome:
        fn, found = self.map_with_aux(problem, solver, meta, task, backend)
        (value, (params, diag)), grad = backend.value_and_grad(fn, has_aux=True)(meta)
        return Outcome(value, grad, params, {**found, **diag})

    def reference(
        self, problem: Problem, solver: Any, meta: Tree, task: Tree, backend: Backend
    ) -> Callable[[Tree], Any]:
        fn, _ = self.map_with_aux(problem, solver, meta, task, backend)
        return lambda theta: fn(theta)[0]
