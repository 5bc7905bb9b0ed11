"""Inner solvers: differentiable loops (gradient descent, optax-style optimizers, learned update
rules) and a black-box SciPy minimiser.

Each iterative solver implements :class:`bilevel.protocols.IterativeSolver`: pure ``init``,
``step`` and ``params`` functions of pytrees, nothing in place, so every strategy can
differentiate or vectorise them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

import numpy as np
import scipy.optimize

from bilevel import tree
from bilevel.protocols import InnerObjective, PerStep, SemiGradient, SolverInfo
from bilevel.solvers.optim import heavy_ball, update
from bilevel.solvers.optim import vectorizable as declared_vectorizable
from bilevel.validate import callable_with, count, instance, nonnegative, positive

__all__ = ["GradientDescent", "Hyper", "Optimizer", "Scipy", "UpdateRule"]

Tree = Any


Hyper = float | Callable[[Tree], Any] | PerStep
"""A solver hyperparameter: a number, a function ``meta -> value`` of the meta-parameters, or a
:class:`~bilevel.protocols.PerStep` function ``(meta, step) -> value``. A value is a scalar
(a number or 0-d array) or a pytree of arrays structured like the parameters (one per
parameter leaf, each a scalar or of the leaf's shape: a rate per layer or per entry)."""


def _check_hyper(
    who: str,
    name: str,
    value: object,
    example: str,
    check_number: Callable[[str, str, object, str], None] = nonnegative,
) -> None:
    """Validate a :data:`Hyper` field: a number (``> lo`` for a step size, ``≥ 0`` else), a
    function of one argument, or a ``PerStep`` of two; a number by ``check_number``."""
    if isinstance(value, PerStep):
        callable_with(who, f"{name} (a PerStep)", value.fn, 2, "(meta, step) -> value")
    elif callable(value):
        callable_with(who, name, value, 1, "(meta) -> value")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        check_number(who, name, value, example)
    else:
        raise TypeError(
            f"{who}: {name} must be a number, got {type(value).__name__} ({value!r}); to learn "
            "it, make it a meta-parameter and pass a function of the meta-parameters: "
            f'{name}=lambda meta: meta["{name}"] (a scalar, or a tree like the parameters), or '
            f"{name}=PerStep(lambda meta, step: ...) for a value per inner step"
        )


def _is_zero(value: object) -> bool:
    """Whether a hyperparameter is the number 0 (so its term is left out, statically)."""
    return isinstance(value, int | float) and value == 0


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in getattr(x, "shape", ()))


def _keeps_leaf(who: str, made: Any, leaf: Any, result: Any, fix: str) -> None:
    """Refuse ``result`` (computed from a parameter ``leaf`` and a user value ``made``) when it
    has another shape (broadcasting) or dtype than ``leaf``: the inner parameters would change
    silently.

    Raises:
        ValueError: for a change of shape. TypeError: for a change of dtype.
    """
    if _shape(result) != _shape(leaf):
        raise ValueError(
            f"{who} has shape {_shape(made)}, which turns a parameter of shape {_shape(leaf)} "
            f"into shape {_shape(result)} (broadcasting); {fix}"
        )
    if getattr(result, "dtype", None) != getattr(leaf, "dtype", None):
        raise TypeError(
            f"{who} has dtype {getattr(made, 'dtype', type(made).__name__)}, which turns a "
            f"parameter of dtype {leaf.dtype} into {getattr(result, 'dtype', None)}; {fix}"
        )


def _times(name: str, rate: Any, x: Tree) -> Tree:
    """``rate ⊙ x`` leafwise for a hyperparameter value ``rate`` (a scalar, or a tree like
    ``x``), refusing a product that would change a leaf's shape or dtype.

    Raises:
        TypeError: for a tree of another structure, or a rate that changes a dtype.
        ValueError: for a rate whose shape broadcasts a leaf to another shape.
    """
    x_leaves, x_def = tree.flatten(x)
    r_leaves, r_def = tree.flatten(rate)
    if r_def != x_def:
        if r_def.kind != "leaf":
            raise TypeError(
                f"GradientDescent: {name} returned a tree of structure {r_def}, but the "
                f"parameters have structure {x_def}; return one scalar, or one value per "
                "parameter leaf in the parameters' structure"
            )
        r_leaves = r_leaves * len(x_leaves)
    out: list[Any] = []
    for r, leaf in zip(r_leaves, x_leaves, strict=True):
        y = r * leaf
        fix = f"return a scalar or one value per entry (shape {_shape(leaf)}) of its dtype"
        _keeps_leaf(f"GradientDescent: {name}", r, leaf, y, fix)
        out.append(y)
    return tree.unflatten(x_def, out)


def _rate_times(name: str, rate: Any, x: Tree) -> Tree:
    """``rate ⊙ x`` for :func:`~bilevel.solvers.optim.heavy_ball`: one product for a number
    (bitwise the arithmetic of ``solvers.SGD``), the checked leafwise one for a value."""
    return tree.scale(rate, x) if isinstance(rate, int | float) else _times(name, rate, x)


def _axpy(name: str, a: Any, x: Tree, y: Tree) -> Tree:
    """``a ⊙ x + y`` leafwise, in one pass for a number ``a`` (the fixed-hyperparameter path)."""
    if isinstance(a, int | float):
        return tree.axpy(a, x, y)
    return tree.add(_times(name, a, x), y)


@dataclass(frozen=True)
class GradientDescent:
    r"""Gradient descent with optional heavy-ball momentum and weight decay on the inner loss.

    .. math:: d_t = ∇f(φ_t) + λ φ_t, \qquad v_{t+1} = μ v_t + d_t, \qquad
              φ_{t+1} = φ_t − α ⊙ v_{t+1}

    The momentum step is :func:`~bilevel.solvers.optim.heavy_ball`, the one that
    :class:`~bilevel.solvers.SGD` takes: with numbers α, μ and no weight decay it equals
    ``Optimizer(SGD(α, μ), steps)`` bit for bit.

    Each hyperparameter α, μ, λ is a number, or a function of the meta-parameters θ
    (``lr=lambda meta: meta["lr"]``), or a :class:`~bilevel.protocols.PerStep` function of θ
    and the step t (``lr=PerStep(lambda meta, t: meta["lr"][t])``, MAML++'s per-step rates).
    A function returns a scalar or a tree like the parameters (a rate per layer, or per entry:
    Meta-SGD). It is evaluated inside every step at the θ being differentiated, so
    ``Unrolled``, ``Truncated`` and ``ForwardMode`` return its true derivative; ``FirstOrder``
    holds the steps constant in θ (derivative 0 for a pure step-size parameter), and
    ``Implicit`` differentiates the stationarity of the inner loss, which α, μ and λ do not
    enter (derivative 0; weight decay belongs in the inner loss for ``Implicit``).

    With ``momentum = 0`` (the number) the state is φ itself (so a fixed point of the step is a
    stationary point); otherwise it is ``(φ, v)``.

    Args:
        lr: the step size α (a number > 0, or a function of θ as above).
        steps: the number of steps K ≥ 0.
        momentum: μ ∈ [0, 1), or a function of θ.
        weight_decay: λ ≥ 0, or a function of θ.

    Raises:
        TypeError: for a hyperparameter that is neither a number nor a function of θ (an
            array: make it a meta-parameter), or a function of the wrong arity.
        ValueError: for a non-positive ``lr``, negative ``steps`` or ``weight_decay``, or μ
            outside [0, 1); from ``step``, for a value whose shape would broadcast a parameter.

    Example:
        >>> import torch
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import InnerObjective
        >>> from bilevel.solvers import GradientDescent
        >>> obj = InnerObjective(lambda w, m, t: ((w - 3.0) ** 2).sum(), None, None, TorchBackend())
        >>> gd = GradientDescent(lr=0.25, steps=2)
        >>> s = gd.init(torch.zeros(1), obj)
        >>> gd.params(gd.step(gd.step(s, obj), obj)).tolist()  # 0 → 1.5 → 2.25
        [2.25]
        >>> learned = GradientDescent(lr=lambda meta: meta["lr"], steps=1)  # α ∈ θ
        >>> obj = InnerObjective(obj.loss_fn, {"lr": torch.tensor([0.25, 0.5])}, None, obj.backend)
        >>> learned.params(learned.step(torch.zeros(2), obj)).tolist()  # α ⊙ 6
        [1.5, 3.0]
    """

    lr: Hyper
    steps: int
    momentum: Hyper = 0.0
    weight_decay: Hyper = 0.0

    vectorizable = True  # IterativeSolver: pure steps, vmapped over a Batch

    def __post_init__(self) -> None:
        who = f"GradientDescent(lr={self.lr!r}, steps={self.steps!r}, momentum={self.momentum!r})"
        _check_hyper(who, "lr", self.lr, "lr=0.01", positive)
        count(who, "steps", self.steps, 0)
        _check_hyper(who, "momentum", self.momentum, "momentum=0.9")
        _check_hyper(who, "weight_decay", self.weight_decay, "weight_decay=1e-4")
        if isinstance(self.momentum, int | float) and self.momentum >= 1:
            raise ValueError(f"{who}: momentum must be < 1 for the iteration to be stable")

    def init(self, params: Tree, objective: InnerObjective) -> Tree:
        if objective.loss_fn is None:
            objective.loss(params)  # raises the TypeError that names the fix
        if _is_zero(self.momentum):
            return params
        return params, objective.backend.zeros_like(params)

    def step(self, state: Tree, objective: InnerObjective) -> Tree:
        stateless = _is_zero(self.momentum)
        params, velocity = (state, None) if stateless else state
        _, direction = objective.value_and_grad(params)
        if not _is_zero(self.weight_decay):
            decay = objective.hyper(self.weight_decay, "GradientDescent(weight_decay=...)")
            direction = _axpy("weight_decay", decay, params, direction)
        mu = None if stateless else objective.hyper(self.momentum, "GradientDescent(momentum=...)")
        lr = objective.hyper(self.lr, "GradientDescent(lr=...)")
        updates, velocity = heavy_ball(direction, velocity, lr, mu, _rate_times)
        params = tree.add(params, updates)
        return params if stateless else (params, velocity)

    def params(self, state: Tree) -> Tree:
        return state if _is_zero(self.momentum) else state[0]


def _check_transform(transform: object) -> None:
    instance("Optimizer", "transform", transform, "", "init", "update")
    if not (
        callable(getattr(transform, "init", None)) and callable(getattr(transform, "update", None))
    ):
        raise TypeError(
            f"Optimizer: transform must be an optax-style gradient transformation with "
            f"init(params) and update(grads, state, params) (e.g. optax.adam(1e-3) or "
            f"torchopt.adam(1e-3)), got {type(transform).__name__}; for a torch.optim optimizer "
            "use solvers.GradientDescent or a torchopt functional optimizer"
        )


@dataclass(frozen=True)
class Optimizer:
    r"""Any optax-style gradient transformation, driven out of place for ``steps`` steps.

    .. math:: (u_t, s_{t+1}) = \mathrm{update}(∇f(φ_t), s_t, φ_t), \qquad φ_{t+1} = φ_t + u_t

    ``optax`` and ``torchopt`` transformations qualify unchanged (torchopt's is called with
    ``inplace=False`` so the meta-gradient is not cut). The state is ``(φ, s)``. A transform
    must be a pure function of its state: torchopt's ``sgd`` with ``dampening > 0`` keeps a
    hidden first-call flag inside the transform object, so reusing one such object gives
    different results on later calls.

    Whether a :class:`~bilevel.Batch` is vmapped through the transform
    (:attr:`~bilevel.protocols.IterativeSolver.vectorizable`) is declared, by the transform or
    here: left out, it is :func:`solvers.optim.vectorizable`'s answer (the transform's own
    ``vectorizable`` attribute, which every ``bilevel.solvers`` transformation has; ``True``
    for an ``optax.GradientTransformation``, pure by optax's contract; else ``False``, e.g.
    torchopt's, which update their state in place). A third-party transformation known to be
    pure is declared with ``vectorizable=True``; a looped Batch gives the same result, slower.

    Args:
        transform: an object with ``init(params)`` and ``update(grads, state, params=...)``.
        steps: the number of steps K ≥ 0.
        vectorizable: ``True``/``False`` to declare whether ``transform`` is pure; left out
            (``None``), the transform's own declaration as above. Read back as a bool.

    Raises:
        TypeError: if ``transform`` is a class or lacks ``init``/``update``, or
            ``vectorizable`` is not a bool.
        ValueError: if ``steps`` is negative.

    Example:
        >>> import torch, torchopt
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import InnerObjective
        >>> from bilevel.solvers import Optimizer
        >>> obj = InnerObjective(lambda w, m, t: ((w - 3.0) ** 2).sum(), None, None, TorchBackend())
        >>> opt = Optimizer(torchopt.sgd(lr=0.25), steps=1)
        >>> opt.params(opt.step(opt.init(torch.zeros(1), obj), obj)).tolist()
        [1.5]
    """

    transform: Any
    steps: int
    vectorizable: bool = None  # pyright: ignore[reportAssignmentType]  # resolved to a bool

    def __post_init__(self) -> None:
        _check_transform(self.transform)
        count(f"Optimizer(steps={self.steps!r})", "steps", self.steps, 0)
        given = cast(object, self.vectorizable)
        if given is None:
            object.__setattr__(self, "vectorizable", declared_vectorizable(self.transform))
        elif not isinstance(given, bool):
            raise TypeError(
                f"Optimizer(vectorizable={given!r}): vectorizable must be True (the transform "
                "is a pure function of its state), False, or left out (the transform's own "
                "declaration: solvers.optim.vectorizable)"
            )

    def init(self, params: Tree, objective: InnerObjective) -> Tree:
        return params, self.transform.init(params)

    def step(self, state: Tree, objective: InnerObjective) -> Tree:
        params, opt_state = state
        _, g = objective.value_and_grad(params)
        updates, opt_state = update(self.transform, g, opt_state, params)
        return tree.add(params, updates), opt_state

    def params(self, state: Tree) -> Tree:
        return state[0]


@dataclass(frozen=True)
class UpdateRule:
    r"""A learned local update rule: ``φ_{t+1} = φ_t + rule(φ_t, θ, τ)``, needing no inner loss.

    The rule sees the current parameters, all meta-parameters and the task, and returns an
    update of the parameters' structure, shapes and dtypes (e.g.
    ``Δw = Σ_k θ_k · feature_k(pre, post, mod, w)``); a ``PerStep(rule)`` also gets the step
    index, ``rule(params, meta, task, step)``. The state is φ itself, so ``Implicit`` can use
    the rule's fixed point (not for a ``PerStep`` rule: a fixed point has no step).

    Args:
        rule: ``(params, meta, task) -> update``, or a ``PerStep`` of
            ``(params, meta, task, step) -> update``.
        steps: the number of applications T ≥ 0.

    Raises:
        TypeError: if ``rule`` is a class or not callable, or returns a tree of another
            structure or an update that would change a parameter's dtype.
        ValueError: if ``steps`` is negative, or an update would change a parameter's shape
            (broadcasting).

    Example:
        >>> import torch
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import InnerObjective
        >>> from bilevel.solvers import UpdateRule
        >>> obj = InnerObjective(None, torch.tensor(0.5), None, TorchBackend())
        >>> r = UpdateRule(lambda w, m, t: -m * w, steps=1)
        >>> r.params(r.step(r.init(torch.ones(2), obj), obj)).tolist()
        [0.5, 0.5]
    """

    rule: Callable[[Tree, Tree, Tree], Tree]
    steps: int

    vectorizable = True  # IterativeSolver: pure steps (given a pure rule), vmapped over a Batch

    def __post_init__(self) -> None:
        instance("UpdateRule", "rule", self.rule, " or a function (params, meta, task)", "__call__")
        if not callable(self.rule):
            raise TypeError(
                f"UpdateRule: rule must be a function (params, meta, task) -> update, got "
                f"{type(self.rule).__name__}"
            )
        count(f"UpdateRule(steps={self.steps!r})", "steps", self.steps, 0)

    def init(self, params: Tree, objective: InnerObjective) -> Tree:
        return params

    def step(self, state: Tree, objective: InnerObjective) -> Tree:
        args = (state, objective.meta, objective.task)
        if isinstance(self.rule, PerStep):
            args = (*args, objective.step_index("UpdateRule's rule"))
        delta = self.rule(*args)
        if tree.structure(delta) != tree.structure(state):
            raise TypeError(
                f"UpdateRule: rule returned an update of structure {tree.structure(delta)}, but "
                f"the parameters have structure {tree.structure(state)}; return one update per "
                "parameter leaf"
            )
        new = tree.add(state, delta)
        for d, p, q in zip(tree.leaves(delta), tree.leaves(state), tree.leaves(new), strict=True):
            fix = "return an update of the parameter's shape and dtype"
            _keeps_leaf("UpdateRule: the rule's update", d, p, q, fix)
        return new

    def params(self, state: Tree) -> Tree:
        return state


_SCIPY_GRADIENT_METHODS = ("L-BFGS-B", "BFGS", "CG", "Newton-CG", "TNC", "SLSQP", "trust-constr")


def _per_step_loss(loss: object) -> bool:
    """Whether the inner loss takes the step index (``PerStep``, also inside ``SemiGradient``)."""
    return isinstance(loss.loss if isinstance(loss, SemiGradient) else loss, PerStep)


def _limit(method: str) -> str:
    """The name of the method's iteration limit (TNC counts function evaluations)."""
    return "maxfun" if method == "TNC" else "maxiter"


def _scipy_options(who: str, method: str, options: object) -> Mapping[str, float | int | bool]:
    """``options`` checked and copied read-only: names SciPy's ``method`` knows (asked of SciPy
    on a one-variable quadratic, whose run costs microseconds), values that are numbers or
    booleans, positive tolerances; the iteration limit is :class:`Scipy`'s ``maxiter``."""
    if not isinstance(options, Mapping):
        raise TypeError(
            f"{who}: options must be a mapping of SciPy option names to values, e.g. "
            f'options={{"gtol": 1e-10}}, got {type(options).__name__} ({options!r})'
        )
    copy: dict[str, float | int | bool] = {}
    for name, value in cast("Mapping[object, object]", options).items():
        if not isinstance(name, str) or not isinstance(value, int | float | bool):
            raise TypeError(
                f"{who}: options must map names (str) to numbers or booleans, got "
                f"{name!r}: {value!r}"
            )
        if name in ("maxiter", "maxfun"):
            raise ValueError(
                f"{who}: give the iteration limit as the maxiter field, Scipy(maxiter=...), "
                f"not as options[{name!r}]"
            )
        if name.endswith("tol"):
            positive(who, name, value, f'options={{"{name}": 1e-10}}')
        copy[name] = value

    def quadratic(x: np.ndarray[Any, Any]) -> tuple[float, np.ndarray[Any, Any]]:
        return float(x @ x), 2 * x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            scipy.optimize.minimize(
                quadratic, np.ones(1), jac=True, method=method, options={**copy, _limit(method): 1}
            )
        except TypeError as e:  # trust-constr: an unexpected keyword argument
            raise ValueError(f"{who}: SciPy refused options {copy}: {e}") from None
    unknown = [str(w.message) for w in caught if "Unknown solver options" in str(w.message)]
    if unknown:
        known = scipy.optimize.show_options("minimize", method, disp=False)
        names = sorted({line.split()[0] for line in str(known).splitlines() if " : " in line})
        bad = ", ".join(repr(n) for n in unknown[0].split(": ", 1)[1].split(", "))
        raise ValueError(
            f"{who}: {bad} is not an option of {method}; its options are {', '.join(names)}"
        )
    return MappingProxyType(copy)


@dataclass(frozen=True)
class Scipy:
    """A black-box inner solver: ``scipy.optimize.minimize`` on the flattened parameters.

    Runs in float64 on the host with gradients from the backend. There is no differentiable
    path through it: use it with ``FirstOrder()`` or ``Implicit(...)``.

    The stopping tests are SciPy's own: ``tol`` sets the method's default tolerances, and
    ``options`` passes the method's own ones (L-BFGS-B: ``gtol`` on the projected gradient,
    ``ftol`` on the relative decrease; BFGS and CG: ``gtol``; Newton-CG: ``xtol``; see
    ``scipy.optimize.show_options("minimize", method)``), which override ``tol``. ``Implicit``
    is exact only at a stationary point, so tighten them (e.g. L-BFGS-B with
    ``options={"gtol": 1e-14, "ftol": 1e-16}``) when the implicit hypergradient must be
    accurate to more digits than the defaults give.

    Args:
        method: a gradient-based SciPy method (``"L-BFGS-B"``, ``"BFGS"``, ``"CG"``, ...).
        tol: SciPy's ``tol`` (> 0).
        maxiter: the iteration limit (≥ 1).
        options: the method's options, passed to ``scipy.optimize.minimize(options=...)``
            (copied, read-only); the iteration limit is ``maxiter``, not an option.

    Raises:
        TypeError: if ``options`` is not a mapping of names to numbers or booleans.
        ValueError: for an unknown method, a non-positive ``tol``/``maxiter``, an option the
            method does not know (asked of SciPy at construction), a non-positive tolerance
            option (a name ending in ``tol``), or ``maxiter``/``maxfun`` among the options.

    Example:
        >>> import torch
        >>> from bilevel.backends import TorchBackend
        >>> from bilevel.protocols import InnerObjective
        >>> from bilevel.solvers import Scipy
        >>> obj = InnerObjective(lambda w, m, t: ((w - 3.0) ** 2).sum(), None, None, TorchBackend())
        >>> w, info = Scipy().solve(torch.zeros(2, dtype=torch.float64), obj)
        >>> [round(x, 6) for x in w.tolist()], info.success
        ([3.0, 3.0], True)
    """

    method: str = "L-BFGS-B"
    tol: float = 1e-12
    maxiter: int = 10_000
    # read-only after construction; left out of the hash (a mapping has none), kept in ==
    options: Mapping[str, float | int | bool] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )

    def __post_init__(self) -> None:
        who = f"Scipy(method={self.method!r})"
        if self.method not in _SCIPY_GRADIENT_METHODS:
            raise ValueError(f"{who}: method must be one of {_SCIPY_GRADIENT_METHODS}")
        positive(who, "tol", self.tol, "tol=1e-10")
        count(who, "maxiter", self.maxiter, 1)
        object.__setattr__(self, "options", _scipy_options(who, self.method, self.options))

    def __repr__(self) -> str:  # options as a plain dict, so that eval(repr(s)) == s
        options = f", options={dict(self.options)!r}" if self.options else ""
        return f"Scipy(method={self.method!r}, tol={self.tol!r}, maxiter={self.maxiter!r}{options})"

    def solve(self, params: Tree, objective: InnerObjective) -> tuple[Tree, SolverInfo]:
        if isinstance(objective.loss_fn, SemiGradient):
            raise TypeError(
                f"{self!r}: a SemiGradient inner loss has no minimiser for SciPy to find (its "
                "gradient holds the targets fixed); use an iterative solver such as "
                "solvers.GradientDescent, which follows the semi-gradient"
            )
        if _per_step_loss(objective.loss_fn):
            raise TypeError(
                f"{self!r}: the inner loss is a PerStep (a new loss at every inner step, e.g. a "
                "fresh minibatch), which has no one minimiser for SciPy to find; use an "
                "iterative solver such as solvers.GradientDescent, which takes numbered steps"
            )
        backend = objective.backend
        flat, unravel = backend.ravel(params)

        def fun(x: np.ndarray[Any, Any]) -> tuple[float, np.ndarray[Any, Any]]:
            value, grad = objective.value_and_grad(unravel(backend.from_numpy(x, like=flat)))
            fx = backend.to_float(value)
            gx = backend.to_numpy(backend.ravel(grad)[0])
            if not (math.isfinite(fx) and np.all(np.isfinite(gx))):
                raise RuntimeError(
                    f"{self!r}: the inner loss or its gradient is not finite at a point SciPy "
                    "tried; check inner_loss, or bound the problem"
                )
            return fx, gx

        res = scipy.optimize.minimize(
            fun,
            backend.to_numpy(flat),
            jac=True,
            method=self.method,
            tol=self.tol,
            # TNC counts function evaluations and calls its limit maxfun
            options={**self.options, _limit(self.method): self.maxiter},
        )
        solution = unravel(backend.from_numpy(res.x, like=flat))
        return solution, SolverInfo(int(res.get("nit", 0)), bool(res.success), str(res.message))
