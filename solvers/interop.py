r"""Stateful PyTorch code as pure inner solvers: ``nn.Module``, ``torch.optim`` and higher.

Every strategy runs the inner loop inside ``torch.func`` transforms (``grad``, ``vjp``, ``jvp``,
``vmap``) on pure functions of pytrees, so a ``torch.optim`` optimizer cannot be stepped there
(it updates leaf tensors in place), and neither can higher's ``DifferentiableOptimizer.step``
(it calls ``torch.autograd.grad``, which fails on ``torch.func``'s wrapped tensors with
"Cannot access storage of TensorWrapper"). Three adapters keep the user's objects and make
the loop pure:

- :func:`from_module` turns an ``nn.Module`` into ``predict(params, x)`` (via
  ``torch.func.functional_call``) and a dict of its parameters, the meta pytree.
- :class:`Higher` steps a ``torch.optim`` optimizer *with higher's own differentiable
  arithmetic* (``DifferentiableSGD._update``, ``DifferentiableAdam._update``), fed with gradients
  taken through the inner objective and with the optimizer state carried in the solver state:
  the same numbers as ``higher.innerloop_ctx``, under every strategy.
- :func:`from_torch_optim` reads a ``torch.optim`` optimizer's class and hyperparameters and
  returns the equivalent pure gradient transformation for :class:`solvers.Optimizer` (or as an
  outer optimizer): torch.optim's documented update, with no dependency on higher.

What cannot be reproduced exactly is refused with a ``TypeError`` naming what is supported;
nothing is approximated silently. torch and higher are imported only when an adapter is built,
so ``import solvers`` stays free of torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bilevel import tree
from bilevel.protocols import InnerObjective
from bilevel.validate import count

__all__ = ["Higher", "TorchOptimState", "TorchOptimTransform", "from_module", "from_torch_optim"]

Tree = Any

# The hyperparameters whose value changes the update, per torch.optim class; the other keys of
# a param group (foreach, fused, capturable, differentiable) choose an implementation only.
_MATH_KEYS: dict[str, tuple[str, ...]] = {
    "SGD": ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"),
    "Adam": ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"),
    "AdamW": (
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "amsgrad",
        "maximize",
        "decoupled_weight_decay",
    ),
    "RMSprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
}
_IMPLEMENTATION_KEYS = {"params", "foreach", "fused", "capturable", "differentiable"}


def from_module(module: Any) -> tuple[Any, dict[str, Any]]:
    """``(predict, params)`` for an ``nn.Module``: a pure ``predict(params, x)`` and its parameters.

    ``predict`` calls ``torch.func.functional_call(module, params, (x,))``, so it runs the
    module's own ``forward`` with the given parameter dict and no state of its own; ``params``
    is ``{name: tensor}`` from ``module.named_parameters()``, detached copies (the module is not
    modified, and the dict can serve as meta-parameters or as an inner solver's start).

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.

    Example:
        >>> import torch
        >>> from bilevel.solvers.interop import from_module
        >>> predict, params = from_module(torch.nn.Linear(2, 1))
        >>> sorted(params), predict(params, torch.ones(3, 2)).shape
        (['bias', 'weight'], torch.Size([3, 1]))
    """
    import torch
    from torch.func import functional_call

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_module: expected a torch.nn.Module, got {type(module).__name__}")

    def predict(params: dict[str, Any], x: Any) -> Any:
        return functional_call(module, params, (x,))

    return predict, {n: p.detach().clone() for n, p in module.named_parameters()}


def _is_torch_optimizer(optimizer: object) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(optimizer, torch.optim.Optimizer)


def _hyperparameters(
    who: str, optimizer: Any, supported: dict[str, tuple[str, ...]]
) -> dict[str, Any]:
    """The one set of hyperparameters shared by all of ``optimizer``'s param groups."""
    names = ", ".join(f"torch.optim.{c}" for c in supported)
    if isinstance(optimizer, type) or not _is_torch_optimizer(optimizer):
        raise TypeError(
            f"{who}: expected a torch.optim optimizer instance ({names}), got "
            f"{optimizer!r}; for an optax-style transformation use solvers.Optimizer directly"
        )
    kind = type(optimizer).__name__
    if type(optimizer).__module__.split(".")[:2] != ["torch", "optim"] or kind not in supported:
        raise TypeError(
            f"{who}: {type(optimizer).__module__}.{kind} is not supported; supported: {names} "
            "(an update rule reproduced exactly, or refused)"
        )
    keys = _MATH_KEYS[kind]
    groups = [{k: v for k, v in g.items() if k in keys} for g in optimizer.param_groups]
    unknown = {k for g in optimizer.param_groups for k in g} - set(keys) - _IMPLEMENTATION_KEYS
    if unknown:
        raise TypeError(
            f"{who}: torch.optim.{kind} has param-group options {sorted(unknown)} that this "
            f"adapter does not know, so it cannot promise the same update; known: {list(keys)}"
        )
    if any(g != groups[0] for g in groups[1:]):
        raise TypeError(
            f"{who}: the param groups of torch.optim.{kind} have different hyperparameters "
            f"({groups}); one transformation applies one set to every leaf: build one optimizer "
            "per set, or use one param group"
        )
    hp = groups[0]
    tensors = [k for k, v in hp.items() if hasattr(v, "shape")]
    if tensors:
        raise TypeError(
            f"{who}: torch.optim.{kind} has tensor hyperparameters {tensors}; pass Python "
            "numbers (a learned hyperparameter belongs in the meta-parameters of the Problem)"
        )
    return hp


def _sqrt(x: Any) -> Any:
    """``√x`` whose derivative at ``x = 0`` is 0 rather than ``∞·0 = NaN`` (a second moment is
    exactly 0 along a coordinate whose gradient is identically 0); the value is unchanged.
    higher masks the same gradient with a hook, which forward mode would not see."""
    import torch

    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0 * x)


class TorchOptimState(NamedTuple):
    """The state of :class:`TorchOptimTransform`: the step count ``t`` (a 0-d tensor) and the
    per-leaf buffers (``None`` where the rule keeps none)."""

    step: Any
    momentum: Tree  # SGD's momentum buffer, Adam's exp_avg, RMSprop's momentum buffer
    square: Tree  # Adam's exp_avg_sq, RMSprop's square_avg
    extra: Tree  # Adam's max_exp_avg_sq (amsgrad), RMSprop's grad_avg (centered)


@dataclass(frozen=True)
class TorchOptimTransform:
    r"""The update rule of a ``torch.optim`` optimizer as a pure optax-style transformation.

    Built by :func:`from_torch_optim`; ``kind`` is ``"SGD"``, ``"Adam"``/``"AdamW"`` or
    ``"RMSprop"`` and ``hp`` its hyperparameters. ``update(grads, state, params)`` returns
    ``(updates, state)`` with ``params + updates`` equal to what ``optimizer.step()`` would
    leave in the parameters (torch's single-tensor code path, written out of place). Pure, so
    ``solvers.Optimizer`` differentiates and vectorises through it; weight decay needs
    ``params``.
    """

    kind: str
    hp: dict[str, Any] = field(hash=False)

    vectorizable = True  # pure: solvers.Optimizer may vmap it over a Batch

    def init(self, params: Tree) -> TorchOptimState:
        import torch

        leaves = tree.leaves(params)
        first = leaves[0] if leaves else torch.zeros(())
        step = torch.zeros((), dtype=first.dtype, device=first.device)
        zeros = tree.map(torch.zeros_like, params)
        if self.kind == "SGD":
            return TorchOptimState(step, zeros if self.hp["momentum"] else None, None, None)
        if self.kind == "RMSprop":
            momentum = zeros if self.hp["momentum"] else None
            return TorchOptimState(step, momentum, zeros, zeros if self.hp["centered"] else None)
        return TorchOptimState(step, zeros, zeros, zeros if self.hp["amsgrad"] else None)

    def update(
        self, grads: Tree, state: TorchOptimState, params: Tree = None
    ) -> tuple[Tree, TorchOptimState]:
        hp = self.hp
        if hp["maximize"]:
            grads = tree.scale(-1.0, grads)
        decoupled = self.kind in ("Adam", "AdamW") and hp["decoupled_weight_decay"]
        if hp["weight_decay"] and params is None:
            raise TypeError(
                f"torch.optim.{self.kind} with weight_decay needs params: call "
                "update(grads, state, params)"
            )
        if hp["weight_decay"] and not decoupled:
            grads = tree.axpy(hp["weight_decay"], params, grads)
        step = state.step + 1
        if self.kind == "SGD":
            return self._sgd(grads, state, step)
        if self.kind == "RMSprop":
            return self._rmsprop(grads, state, step)
        return self._adam(grads, state, step, params if decoupled else None)

    def _sgd(self, g: Tree, state: TorchOptimState, step: Any) -> tuple[Tree, TorchOptimState]:
        hp = self.hp
        mu = hp["momentum"]
        buf = None
        if mu:
            # torch: the first step sets buf = g (no dampening); later buf = μ·buf + (1 − d)·g
            first = (step == 1).to(step.dtype)
            later = tree.axpy(mu, state.momentum, tree.scale(1 - hp["dampening"], g))
            buf = tree.map(lambda a, b: first * a + (1 - first) * b, g, later)
            g = tree.axpy(mu, buf, g) if hp["nesterov"] else buf
        return tree.scale(-hp["lr"], g), TorchOptimState(step, buf, None, None)

    def _adam(
        self, g: Tree, state: TorchOptimState, step: Any, decay_params: Tree
    ) -> tuple[Tree, TorchOptimState]:
        import torch

        hp = self.hp
        b1, b2 = hp["betas"]
        m = tree.map(lambda m, g: m + (1 - b1) * (g - m), state.momentum, g)  # torch: lerp
        v = tree.map(lambda v, g: v * b2 + (1 - b2) * g * g, state.square, g)
        vmax = tree.map(torch.maximum, state.extra, v) if hp["amsgrad"] else None
        bc1, bc2_sqrt = 1 - b1**step, (1 - b2**step).sqrt()
        step_size = hp["lr"] / bc1
        second = vmax if hp["amsgrad"] else v
        updates = tree.map(
            lambda m, v: -step_size * (m / (_sqrt(v) / bc2_sqrt + hp["eps"])), m, second
        )
        if decay_params is not None:  # AdamW: p ← p·(1 − lr·wd), before the Adam step
            updates = tree.axpy(-hp["lr"] * hp["weight_decay"], decay_params, updates)
        return updates, TorchOptimState(step, m, v, vmax)

    def _rmsprop(self, g: Tree, state: TorchOptimState, step: Any) -> tuple[Tree, TorchOptimState]:
        hp = self.hp
        alpha, eps = hp["alpha"], hp["eps"]
        sq = tree.map(lambda s, g: s * alpha + (1 - alpha) * g * g, state.square, g)
        if hp["centered"]:
            ga = tree.map(lambda a, g: a + (1 - alpha) * (g - a), state.extra, g)  # torch: lerp
            avg = tree.map(lambda s, a: _sqrt(s - a * a) + eps, sq, ga)
        else:
            ga = None
            avg = tree.map(lambda s: _sqrt(s) + eps, sq)
        if hp["momentum"]:
            buf = tree.map(lambda b, g, a: b * hp["momentum"] + g / a, state.momentum, g, avg)
            return tree.scale(-hp["lr"], buf), TorchOptimState(step, buf, sq, ga)
        updates = tree.map(lambda g, a: -hp["lr"] * (g / a), g, avg)
        return updates, TorchOptimState(step, None, sq, ga)


def from_torch_optim(optimizer: Any) -> TorchOptimTransform:
    r"""The pure transformation that performs ``optimizer.step()``'s update, for
    :class:`solvers.Optimizer` (inner loop) or ``bilevel.trainer.fit`` (outer loop).

    Supported: ``torch.optim.SGD`` (momentum, dampening, nesterov, weight_decay, maximize),
    ``torch.optim.Adam`` and ``torch.optim.AdamW`` (betas, eps, weight_decay, amsgrad, maximize,
    decoupled weight decay), ``torch.optim.RMSprop`` (alpha, eps, weight_decay, momentum,
    centered, maximize). The optimizer is only read: its class and its param groups'
    hyperparameters, which must be the same in every group. Its state (e.g. a momentum buffer
    from earlier ``step()`` calls) is not carried over: the transformation starts fresh, as an
    inner loop does.

    Raises:
        TypeError: for another class (``Adagrad``, ``LBFGS``, a subclass, a torchopt or higher
            optimizer, …), param groups with different hyperparameters, tensor hyperparameters,
            or an option this function does not know.

    Example:
        >>> import torch
        >>> from bilevel import solvers
        >>> from bilevel.solvers.interop import from_torch_optim
        >>> w = torch.zeros(2, requires_grad=True)
        >>> transform = from_torch_optim(torch.optim.SGD([w], lr=0.5, momentum=0.9))
        >>> solver = solvers.Optimizer(transform, steps=10)  # any strategy can differentiate it
        >>> u, state = transform.update(torch.tensor([1.0, -2.0]), transform.init(w.detach()))
        >>> u.tolist()
        [-0.5, 1.0]
    """
    hp = _hyperparameters("from_torch_optim", optimizer, _MATH_KEYS)
    return TorchOptimTransform(type(optimizer).__name__, dict(hp))


# ----------------------------------------------------------------------------- higher
_HIGHER_SUPPORTED = {
    "SGD": ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"),
    "Adam": ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"),
}


class HigherState(NamedTuple):
    """:class:`Higher`'s state: the inner parameters, the step count (0-d tensor) and, per
    parameter name, higher's optimizer state for it (``{"momentum_buffer": …}``, …)."""

    params: dict[str, Any]
    step: Any
    buffers: dict[str, dict[str, Any]]


@dataclass(frozen=True, eq=False)
class Higher:
    r"""A module's ``torch.optim`` optimizer as an inner solver, stepped by higher's
    differentiable version of it: ``higher.innerloop_ctx(module, optimizer)``'s inner loop,
    made pure.

    .. math:: g_t = ∇f(φ_t), \qquad (φ_{t+1}, s_{t+1}) = \mathrm{higher\_update}(φ_t, g_t, s_t)

    where ``higher_update`` is higher's ``DifferentiableSGD._update`` /
    ``DifferentiableAdam._update`` on a fresh copy of its state ``s_t``, which the solver state
    carries (nothing survives inside the object between steps). The gradient comes from the
    inner objective (``torch.func``), not from higher's ``step``, which calls
    ``torch.autograd.grad`` and cannot run under ``torch.func``. The inner parameters are a
    dict ``{name: tensor}`` keyed like ``module.named_parameters()`` (e.g. from
    :func:`from_module`); parameters the optimizer does not hold stay fixed, as in higher.
    The step count is read back as a Python number for higher's bias correction (a host
    synchronisation; on a GPU prefer :func:`from_torch_optim`).

    Note: higher's Adam adds ``eps`` to ``√v_t`` before the bias correction (the pre-1.5
    ``torch.optim.Adam``), so it differs from ``torch.optim.Adam`` today, from
    :class:`solvers.Adam` and from :func:`from_torch_optim` by a relative ~``eps/√v̂``; its SGD
    is torch's.

    Args:
        module: the ``nn.Module`` whose parameters ``optimizer`` was built on.
        optimizer: a ``torch.optim.SGD`` or ``torch.optim.Adam`` instance (one set of
            hyperparameters; ``maximize``, ``decoupled_weight_decay`` and ``AdamW`` are refused,
            since higher would ignore them).
        steps: the number of inner steps K ≥ 0.

    Raises:
        TypeError: for an unsupported optimizer or option, or one that holds a tensor that is
            not a parameter of ``module``.
        ImportError: if higher is not installed (``pip install bilevel[interop]``).
    """

    module: Any
    optimizer: Any
    steps: int
    _shell: Any = field(init=False, repr=False, compare=False)
    _names: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        import torch

        hp = _hyperparameters("Higher", self.optimizer, _HIGHER_SUPPORTED)
        if hp["maximize"] or hp.get("decoupled_weight_decay"):
            raise TypeError(
                f"Higher: higher's differentiable {type(self.optimizer).__name__} ignores "
                "maximize and decoupled_weight_decay, so it would not do what torch.optim does; "
                "use solvers.Optimizer(solvers.interop.from_torch_optim(optimizer), steps)"
            )
        if not isinstance(self.module, torch.nn.Module):
            raise TypeError(f"Higher: module must be a torch.nn.Module, got {self.module!r}")
        count(f"Higher(steps={self.steps!r})", "steps", self.steps, 0)
        try:
            import higher  # pyright: ignore[reportMissingImports]
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("Higher needs higher: pip install 'bilevel[interop]'") from e
        named = list(self.module.named_parameters())
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        by_id = {id(p) for _, p in named}
        if held - by_id:
            raise TypeError(
                "Higher: the optimizer holds tensors that are not parameters of the module; "
                "build it on module.parameters() (as higher.innerloop_ctx requires)"
            )
        shell = higher.optim.get_diff_optim(self.optimizer, [p for _, p in named])
        object.__setattr__(self, "_shell", shell)
        object.__setattr__(self, "_names", [n for n, _ in named])

    def init(self, params: dict[str, Any], objective: InnerObjective) -> HigherState:
        import torch

        if objective.loss_fn is None:
            objective.loss(params)  # raises the TypeError that names the fix
        missing = set(self._names) - set(params) if isinstance(params, dict) else None  # pyright: ignore[reportUnnecessaryIsInstance]
        if missing is None or missing:
            raise TypeError(
                f"Higher: the inner parameters must be a dict with the module's parameter names "
                f"{self._names} (e.g. from solvers.interop.from_module), got "
                f"{tree.structure(params)}"
            )
        first = params[self._names[0]]
        step = torch.zeros((), dtype=first.dtype, device=first.device)
        return HigherState(params, step, {n: {} for n in self._names})

    def step(self, state: HigherState, objective: InnerObjective) -> HigherState:
        _, grads = objective.value_and_grad(state.params)
        shell, names = self._shell, self._names
        step = state.step + 1
        # A fresh view of higher's optimizer for this step: its param lists and state dicts are
        # rebuilt from the solver state, _update rebinds them, and we read them back.
        shell.param_groups = [dict(g, params=list(g["params"])) for g in shell.param_groups]
        shell.state = [{} for _ in shell.param_groups]
        grouped = []
        for gi, (group, mapping) in enumerate(
            zip(shell.param_groups, shell._group_to_param_list, strict=True)
        ):
            for i, index in enumerate(mapping):
                name = names[index]
                group["params"][i] = state.params[name]
                buffers = dict(state.buffers[name])
                if buffers and "exp_avg" in buffers:
                    buffers["step"] = int(state.step)  # higher increments it, then corrects
                shell.state[gi][i] = buffers
            grouped.append([grads[names[index]] for index in mapping])
        shell._update(grouped)
        params, buffers = dict(state.params), dict(state.buffers)
        for gi, (group, mapping) in enumerate(
            zip(shell.param_groups, shell._group_to_param_list, strict=True)
        ):
            for i, index in enumerate(mapping):
                name = names[index]
                params[name] = group["params"][i]
                buffers[name] = {k: v for k, v in shell.state[gi][i].items() if k != "step"}
        return HigherState(params, step, buffers)

    def params(self, state: HigherState) -> dict[str, Any]:
        return state.params
