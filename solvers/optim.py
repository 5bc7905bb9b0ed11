r"""Gradient transformations (optax-style), pure and backend-neutral: outer or inner optimizers.

Each is a frozen dataclass with ``init(params) -> state`` and
``update(grads, state, params=None) -> (updates, state)``; apply with ``params + updates``
(:func:`bilevel.tree.add`). The state is a pytree of the parameters' own arrays plus a Python
step count, so the same object drives ``bilevel.trainer.fit`` (outer loop) and
``solvers.Optimizer`` (inner loop, where it may be differentiated through and vectorised over a
:class:`~bilevel.Batch`: nothing is updated in place). The arithmetic is written with the
arrays' operators, so torch tensors and JAX arrays both work.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from bilevel import tree
from bilevel.validate import nonnegative, positive

__all__ = ["SGD", "Adam", "AdamState", "SGDState", "heavy_ball", "update", "vectorizable"]

Tree = Any


class SGDState(NamedTuple):
    """The momentum buffer ``m`` (``None`` without momentum)."""

    momentum: Tree


class AdamState(NamedTuple):
    """The step count ``t`` and the moment estimates ``m`` and ``v``."""

    step: int
    mu: Tree
    nu: Tree


def _library_transformation(transform: object, library: str, path: tuple[str, ...]) -> bool:
    """Whether ``transform`` is an instance of ``library``'s transformation class (found at
    ``path`` in the module). Looked up in ``sys.modules`` only: if the library was never
    imported, nothing can be one of its transformations, and bilevel does not import it."""
    found: Any = sys.modules.get(library)
    for name in path:
        found = getattr(found, name, None)
    return isinstance(found, type) and isinstance(transform, found)


def _is_torchopt(transform: object) -> bool:
    return _library_transformation(transform, "torchopt", ("base", "GradientTransformation"))


def vectorizable(transform: object) -> bool:
    """Whether the optax-style ``transform`` may run under ``vmap``, as it is declared:

    - its own ``vectorizable`` attribute, where it has one (every transformation of
      ``bilevel.solvers`` declares ``vectorizable = True``: pure, state in, state out);
    - an ``optax.GradientTransformation``: ``True``, optax's documented contract (``init``
      and ``update`` are pure functions);
    - anything else: ``False``, the safe answer (torchopt's transformations update their state
      in place, which ``vmap`` rejects; a :class:`~bilevel.Batch` is then looped, with the
      same result). Declare a pure third-party transformation with
      ``solvers.Optimizer(transform, steps, vectorizable=True)``.

    Example:
        >>> from bilevel.solvers import SGD, chain
        >>> from bilevel.solvers.optim import vectorizable
        >>> vectorizable(SGD(0.1)), vectorizable(chain(SGD(0.1))), vectorizable(object())
        (True, True, False)
    """
    declared = getattr(transform, "vectorizable", None)
    if declared is not None:
        return declared is True
    return _library_transformation(transform, "optax", ("GradientTransformation",))


def update(transform: Any, grads: Tree, state: Any, params: Tree) -> tuple[Tree, Any]:
    """``transform.update(grads, state, params)``, out of place: a torchopt transformation
    (whose ``update`` writes into its state unless told ``inplace=False``) is called with
    ``inplace=False``, so neither its state nor a meta-gradient through it is cut.

    Raises:
        TypeError: for a torchopt transformation built with ``use_accelerated_op=True``, whose
            fused ``autograd.Function`` cannot run under ``torch.func`` (torch: "must override
            the setup_context staticmethod"), with the fix.
    """
    try:
        if _is_torchopt(transform):
            return transform.update(grads, state, params=params, inplace=False)
        return transform.update(grads, state, params)
    except RuntimeError as e:
        if "setup_context" not in str(e):
            raise
        raise TypeError(
            f"solvers.Optimizer: the transformation {type(transform).__name__} calls an "
            "autograd.Function (torchopt's built with use_accelerated_op=True do) that "
            "torch.func cannot differentiate or vectorise; build it with "
            "use_accelerated_op=False, e.g. torchopt.adam(1e-3, use_accelerated_op=False), or "
            "use solvers.Adam"
        ) from e


def sqrt_zero_safe(v: Any) -> Any:
    """``√v`` for ``v ≥ 0`` whose derivative at ``v = 0`` is 0 instead of ∞: a coordinate whose
    gradient is always 0 keeps ``v = 0``, and ``∞ · 0`` would make the hypergradient through
    the inner loop NaN. The value is unchanged; such a coordinate's update is 0 for every θ, so
    0 is also the right derivative."""
    positive = v > 0
    return (positive * v + ~positive) ** 0.5 * positive


def _zeros(params: Tree) -> Tree:
    return tree.map(lambda x: x * 0, params)


Times = Callable[[str, Any, Tree], Tree]
"""``(name, rate, x) -> rate ⊙ x``: how :func:`heavy_ball` multiplies a tree by a
hyperparameter value (``name`` is the hyperparameter's, for error messages)."""


def _scalar_times(name: str, rate: Any, x: Tree) -> Tree:
    return tree.scale(rate, x)


def heavy_ball(
    grads: Tree, velocity: Tree | None, lr: Any, momentum: Any, times: Times = _scalar_times
) -> tuple[Tree, Tree | None]:
    r"""One heavy-ball (Polyak momentum) step: bilevel's one implementation of it.

    .. math:: v_{t+1} = μ ⊙ v_t + g_t, \qquad u_t = −η ⊙ v_{t+1}
              \qquad (\text{no velocity: } u_t = −η ⊙ g_t)

    :class:`SGD`, ``solvers.GradientDescent`` (whose ``g`` includes the weight decay and whose
    η, μ may be trees or functions of the meta-parameters) and the ``torch.optim.SGD`` bridge
    (``solvers.interop.from_torch_optim``) all step through it. It is PyTorch's convention
    (``torch.optim.SGD`` with dampening 0), which is also torchopt's and optax's ``sgd``.

    Args:
        grads: the direction ``g_t`` (the gradient, or what a chain made of it).
        velocity: ``v_t``, or ``None`` for plain gradient descent (μ is then not used).
        lr: η, a number or a value ``times`` accepts.
        momentum: μ, likewise.
        times: ``(name, rate, x) -> rate ⊙ x``; by default ``rate * x`` leafwise for a scalar.

    Returns:
        ``(u_t, v_{t+1})``: the update to add to the parameters and the new velocity
        (``None`` without one).

    Example:
        >>> import torch
        >>> from bilevel.solvers.optim import heavy_ball
        >>> u, v = heavy_ball(torch.tensor([2.0]), torch.tensor([1.0]), lr=0.5, momentum=0.9)
        >>> [round(x, 6) for x in (u.item(), v.item())]  # v = 0.9·1 + 2, u = −0.5·v
        [-1.45, 2.9]
    """
    if velocity is not None:
        grads = velocity = tree.add(times("momentum", momentum, velocity), grads)
    negative = -lr if isinstance(lr, int | float) else tree.scale(-1, lr)
    return times("lr", negative, grads), velocity


@dataclass(frozen=True)
class SGD:
    r"""Stochastic gradient descent with optional heavy-ball momentum (:func:`heavy_ball`).

    .. math:: m_{t+1} = μ m_t + g_t, \qquad u_t = −η\, m_{t+1} \quad (μ = 0: u_t = −η g_t)

    Args:
        lr: the step size η > 0.
        momentum: μ ∈ [0, 1).

    Raises:
        TypeError / ValueError: for a non-numeric, non-positive ``lr`` or ``momentum`` ∉ [0, 1).

    Example:
        >>> import torch
        >>> from bilevel.solvers import SGD
        >>> opt = SGD(lr=0.5)
        >>> params = {"w": torch.tensor(1.0)}
        >>> updates, state = opt.update({"w": torch.tensor(2.0)}, opt.init(params))
        >>> float(updates["w"])
        -1.0
    """

    lr: float
    momentum: float = 0.0

    vectorizable = True  # pure: solvers.Optimizer may vmap it over a Batch

    def __post_init__(self) -> None:
        positive(f"SGD(lr={self.lr!r})", "lr", self.lr, "SGD(lr=0.1)")
        nonnegative(f"SGD(momentum={self.momentum!r})", "momentum", self.momentum, "0.9")
        if self.momentum >= 1:
            raise ValueError(f"SGD(momentum={self.momentum!r}): momentum must be < 1, e.g. 0.9")

    def init(self, params: Tree) -> SGDState:
        return SGDState(_zeros(params) if self.momentum else None)

    def update(self, grads: Tree, state: SGDState, params: Tree = None) -> tuple[Tree, SGDState]:
        updates, m = heavy_ball(grads, state.momentum, self.lr, self.momentum)
        return updates, SGDState(m)


@dataclass(frozen=True)
class Adam:
    r"""Adam (Kingma & Ba 2015), with bias correction.

    .. math:: m_t = β_1 m_{t−1} + (1−β_1) g_t, \quad v_t = β_2 v_{t−1} + (1−β_2) g_t^2, \quad
              u_t = −η\, \frac{m_t / (1 − β_1^t)}{\sqrt{v_t / (1 − β_2^t)} + ε}

    Args:
        lr: the step size η > 0.
        b1, b2: the moment decay rates, in [0, 1).
        eps: ε > 0, added to the denominator.

    Raises:
        TypeError / ValueError: for a non-numeric or out-of-range hyperparameter.

    Example:
        >>> import torch
        >>> from bilevel.solvers import Adam
        >>> opt = Adam(lr=0.1)
        >>> updates, _ = opt.update(torch.tensor([3.0, -0.5]), opt.init(torch.zeros(2)))
        >>> [round(u, 4) for u in updates.tolist()]  # the first step is −η·sign(g)
        [-0.1, 0.1]
    """

    lr: float
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    vectorizable = True  # pure: solvers.Optimizer may vmap it over a Batch

    def __post_init__(self) -> None:
        positive(f"Adam(lr={self.lr!r})", "lr", self.lr, "Adam(lr=1e-3)")
        positive(f"Adam(eps={self.eps!r})", "eps", self.eps, "1e-8")
        for name in ("b1", "b2"):
            value = getattr(self, name)
            nonnegative(f"Adam({name}={value!r})", name, value, "0.9")
            if value >= 1:
                raise ValueError(f"Adam({name}={value!r}): {name} must be < 1, e.g. 0.999")

    def init(self, params: Tree) -> AdamState:
        return AdamState(0, _zeros(params), _zeros(params))

    def update(self, grads: Tree, state: AdamState, params: Tree = None) -> tuple[Tree, AdamState]:
        t = state.step + 1
        mu = tree.map(lambda m, g: self.b1 * m + (1 - self.b1) * g, state.mu, grads)
        nu = tree.map(lambda v, g: self.b2 * v + (1 - self.b2) * g * g, state.nu, grads)
        c1, c2 = 1 - self.b1**t, 1 - self.b2**t
        updates = tree.map(
            lambda m, v: -self.lr * (m / c1) / (sqrt_zero_safe(v / c2) + self.eps), mu, nu
        )
        return updates, AdamState(t, mu, nu)
