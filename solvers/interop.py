r"""Stateful PyTorch code as pure inner solvers: ``nn.Module``, ``torch.optim`` and higher.

Every strategy runs the inner loop inside ``torch.func`` transforms (``grad``, ``vjp``, ``jvp``,
``vmap``) on pure functions of pytrees, so a ``torch.optim`` optimizer cannot be stepped there
(it updates leaf tensors in place), and neither can higher's ``DifferentiableOptimizer.step``
(it calls ``torch.autograd.grad``, which fails on ``torch.func``'s wrapped tensors with
"Cannot access storage of TensorWrapper"). Three adapters keep the user's objects and make
the loop pure:

- :func:`from_module` turns an ``nn.Module`` into ``predict(params, x)`` (via
  ``torch.func.functional_call``) and a dict of its parameters, the meta pytree; the module is
  never written (tied weights, buffers and BatchNorm included: see ``docs/modules.md``), and
  :func:`updated_buffers` computes the running statistics a forward pass would leave.
- :class:`Higher` steps a ``torch.optim`` optimizer *with higher's own differentiable
  arithmetic* (``DifferentiableSGD._update``, ``DifferentiableAdam._update``), fed with gradients
  taken through the inner objective and with the optimizer state carried in the solver state:
  the same numbers as ``higher.innerloop_ctx``, under every strategy.
- :func:`from_torch_optim` reads a ``torch.optim`` optimizer's class and hyperparameters and
  returns the equivalent pure gradient transformation for :class:`solvers.Optimizer` (or as an
  outer optimizer): torch.optim's documented update, with no dependency on higher.

What cannot be reproduced exactly is refused with a ``TypeError`` naming what is supported;
nothing is approximated silently. torch and higher are imported only when an adapter is built,
so ``from bilevel import solvers`` stays free of torch.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bilevel import tree
from bilevel.protocols import InnerObjective
from bilevel.solvers.optim import heavy_ball
from bilevel.validate import count

__all__ = [
    "Higher",
    "TorchOptimState",
    "TorchOptimTransform",
    "from_module",
    "from_torch_optim",
    "updated_buffers",
]

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


@dataclass(frozen=True)
class _Slots:
    """Where ``module`` keeps its tensors: every distinct ``(submodule, attribute)`` slot once,
    under one of its names, with the name of the tensor it holds (``named_parameters()``'s /
    ``named_buffers()``'s, which name each tensor once however often it is tied)."""

    params: dict[str, str]  # slot name -> parameter name
    buffers: dict[str, str]  # slot name -> buffer name
    aliases: dict[str, str]  # another name of a tied parameter -> its parameter name
    norms: tuple[tuple[Any, tuple[str, ...]], ...]  # (norm layer, its running-statistics slots)


def _slots(module: Any) -> _Slots:
    # torch's base of every layer with running statistics (BatchNorm*d, SyncBatchNorm,
    # InstanceNorm*d, their lazy forms and subclasses); private, but the one common definition
    from torch.nn.modules.batchnorm import _NormBase  # pyright: ignore[reportPrivateUsage]

    def distinct(named: list[tuple[str, Any]], canonical: dict[int, str]) -> dict[str, str]:
        # functional_call swaps one slot per name: a slot reached under two names (the same
        # submodule used twice) must be swapped once, or restoring it leaves the swapped-in
        # tensor behind (torch.func.functional_call with tie_weights=True does exactly that).
        seen: set[tuple[int, str]] = set()
        slots: dict[str, str] = {}
        for name, tensor in named:
            owner, _, attr = name.rpartition(".")
            key = (id(module.get_submodule(owner)), attr)
            if key not in seen:
                seen.add(key)
                slots[name] = canonical[id(tensor)]
        return slots

    param_names = {id(p): n for n, p in module.named_parameters()}
    every_param = list(module.named_parameters(remove_duplicate=False))
    params = distinct(every_param, param_names)
    buffers = distinct(
        list(module.named_buffers(remove_duplicate=False)),
        {id(b): n for n, b in module.named_buffers()},
    )
    aliases = {n: param_names[id(p)] for n, p in every_param if n != param_names[id(p)]}
    running = ("running_mean", "running_var", "num_batches_tracked")
    norms = tuple(
        (
            sub,
            tuple(
                slot
                for slot in buffers
                if slot.rpartition(".")[2] in running
                and module.get_submodule(slot.rpartition(".")[0]) is sub
            ),
        )
        for sub in module.modules()
        if isinstance(sub, _NormBase) and sub.track_running_stats
    )
    return _Slots(params, buffers, aliases, norms)


def _check_names(who: str, params: Any, slots: _Slots, buffer_names: Container[str]) -> None:
    """``params`` is a dict whose keys are parameter names (one per tied tensor) or buffers."""

    if not isinstance(params, Mapping):
        raise TypeError(
            f"{who}: params must be a dict {{name: tensor}} keyed like module.named_parameters() "
            f"(as from_module returns it), got a {type(params).__name__}"
        )
    known = set(slots.params.values())
    for name in params:
        if name in known or name in buffer_names:
            continue
        if name in slots.aliases:
            raise ValueError(
                f"{who}: parameter {name!r} is tied to {slots.aliases[name]!r} (one tensor used "
                f"in two places); pass it once, under {slots.aliases[name]!r}, as from_module's "
                "params hold it"
            )
        raise ValueError(
            f"{who}: {name!r} is not a name of the module's named_parameters() or "
            f"named_buffers(); known parameters: {sorted(known)}"
        )


def from_module(module: Any) -> tuple[Any, dict[str, Any]]:
    r"""``(predict, params)`` for an ``nn.Module``: a pure ``predict(params, *inputs)`` and its
    parameters.

    .. math:: \mathrm{predict}(φ, x) = \mathrm{module.forward}(x)\big|_{\text{parameters} = φ}

    ``params`` is ``{name: tensor}`` keyed like ``module.named_parameters()``: detached copies,
    so it can serve as meta-parameters or as an inner solver's start. Parameters with
    ``requires_grad=False`` (a layer the user froze) are left out: ``predict`` reads them from
    the module as constants, so they are neither adapted nor meta-learned. A tied parameter (one
    ``Parameter`` used in several places: a submodule used twice, or one ``Parameter`` assigned
    to two submodules) is *one* entry, so its gradient is the sum over all its uses.
    ``predict`` runs the module's own ``forward`` with those tensors in every slot that holds
    them; missing names use the module's own parameters (e.g. a frozen backbone, which
    ``hypergrad`` does not differentiate), and names that are not the module's are refused.

    Buffers and modes. The module is never written: ``predict`` runs on private copies of the
    buffers, and each layer's own ``train()``/``eval()`` flag, read when ``predict`` runs,
    decides what it computes:

    - normalisation layers with running statistics (``BatchNorm*``, ``InstanceNorm*`` with
      ``track_running_stats=True``) in **train mode** normalise with the statistics of the
      batch they are given, the transductive batch normalisation of MAML (higher's
      ``examples/maml-omniglot.py``): inside a :class:`~bilevel.Batch` each task is normalised
      with its own batch. Their running statistics are neither read nor updated.
    - in **eval mode** they normalise with the running statistics, constants of the
      computation (no gradient flows into them).
    - dropout follows its own mode (identity in eval mode, as in ``nn.Dropout``).

    Running statistics change only when you ask: :func:`updated_buffers` returns the buffers
    a train-mode forward would leave behind; keep them as state and pass them to ``predict``
    beside the parameters (``predict({**params, **buffers}, x)``), or write them into the
    module yourself (``module.load_state_dict(buffers, strict=False)``).

    Args:
        module: the ``nn.Module``. Its structure is read once, here; its parameters, buffers
            and modes whenever ``predict`` runs.

    Returns:
        ``(predict, params)``. ``predict(params, *inputs, **kwargs)`` calls the module with
        ``params`` (and optionally buffers, by their ``named_buffers()`` names) in place of its
        own tensors.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``; from ``predict``, if ``params`` is not
            a dict.
        ValueError: from ``predict``, for a name that is not one of the module's parameters or
            buffers, or the second name of a tied parameter.

    Example:
        >>> import torch
        >>> from bilevel.solvers.interop import from_module
        >>> predict, params = from_module(torch.nn.Linear(2, 1))
        >>> sorted(params), predict(params, torch.ones(3, 2)).shape
        (['bias', 'weight'], torch.Size([3, 1]))
        >>> proj = torch.nn.Linear(2, 2)
        >>> sorted(from_module(torch.nn.Sequential(proj, torch.nn.Tanh(), proj))[1])  # tied
        ['0.bias', '0.weight']
    """
    import torch
    from torch.func import functional_call

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_module: expected a torch.nn.Module, got {type(module).__name__}")
    slots = _slots(module)

    def predict(params: dict[str, Any], *inputs: Any, **kwargs: Any) -> Any:
        buffers = dict(module.named_buffers())
        _check_names("from_module's predict", params, slots, buffers)
        # private copies: a forward that writes into a buffer writes into its copy
        copies = {n: params.get(n, b).clone() for n, b in buffers.items()}
        tensors: dict[str, Any] = {s: params[n] for s, n in slots.params.items() if n in params}
        tensors.update({s: copies[n] for s, n in slots.buffers.items()})
        for norm, running in slots.norms:
            if norm.training:  # batch statistics; None: neither read nor updated
                tensors.update(dict.fromkeys(running))
        return functional_call(module, tensors, inputs, kwargs, tie_weights=False)

    # A parameter frozen by its owner (requires_grad=False) is not a meta-parameter: predict
    # reads it from the module, a constant, as torch.optim and higher leave it alone.
    trainable = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    return predict, trainable


def updated_buffers(
    module: Any, params: dict[str, Any], *inputs: Any, **kwargs: Any
) -> dict[str, Any]:
    r"""The buffers ``module`` would hold after one forward pass on ``inputs`` with ``params``,
    computed on copies: the explicit update of running statistics for :func:`from_module`.

    For a ``BatchNorm`` layer in train mode with momentum ``m`` that is
    ``running_mean ← (1 − m)·running_mean + m·mean_batch`` (the unbiased variance likewise) and
    ``num_batches_tracked ← num_batches_tracked + 1``: whatever the module's own ``forward``
    does to its buffers in its current modes (in eval mode, nothing). The start is the module's
    buffers, or those that ``params`` holds by their ``named_buffers()`` names, so the update
    chains: ``buffers = updated_buffers(module, {**params, **buffers}, x)``. Nothing is
    differentiated (the result is detached) and neither the module nor ``params`` is written.
    Call it on one task's parameters, outside ``torch.func`` transforms: it is bookkeeping for
    evaluation (e.g. the running statistics of an adapted model), not part of a hypergradient.

    Args:
        module: the ``nn.Module`` given to :func:`from_module`.
        params: ``{name: tensor}`` as from :func:`from_module` (e.g. ``res.params`` of one
            task), optionally with buffers by name.
        *inputs, **kwargs: the forward pass's inputs.

    Returns:
        ``{name: tensor}`` for every entry of ``module.named_buffers()``.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module`` or ``params`` not a dict.
        ValueError: for a name that is not one of the module's parameters or buffers.

    Example:
        >>> import torch
        >>> from bilevel.solvers.interop import from_module, updated_buffers
        >>> bn = torch.nn.BatchNorm1d(1, momentum=0.5)
        >>> predict, params = from_module(bn)
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> buffers = updated_buffers(bn, params, x)
        >>> buffers["running_mean"].tolist(), int(buffers["num_batches_tracked"])
        ([1.0], 1)
        >>> bn.running_mean.tolist()  # the module is unchanged
        [0.0]
    """
    import torch
    from torch.func import functional_call

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"updated_buffers: expected a torch.nn.Module, got {type(module).__name__}")
    slots = _slots(module)
    buffers = dict(module.named_buffers())
    _check_names("updated_buffers", params, slots, buffers)
    with torch.no_grad():
        new = {n: params.get(n, b).detach().clone() for n, b in buffers.items()}
        tensors: dict[str, Any] = {
            s: params[n].detach() for s, n in slots.params.items() if n in params
        }
        tensors.update({s: new[n] for s, n in slots.buffers.items()})
        functional_call(module, tensors, inputs, kwargs, tie_weights=False)
    # functional_call writes back what the forward left in each slot (a reassigned buffer too)
    out: dict[str, Any] = {}
    for s, n in slots.buffers.items():
        out.setdefault(n, tensors[s])
    return out


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
        """torch's SGD as :func:`~bilevel.solvers.optim.heavy_ball` (``solvers.SGD``'s step):
        ``buf = μ·buf + (1 − d)·g`` from a zero buffer, ``u = −η·buf``. Dampening d differs
        at the first step only, where torch sets ``buf = g``; Nesterov steps along
        ``g + μ·buf``, which is the heavy-ball update of ``g`` from the new buffer."""
        hp = self.hp
        lr, mu, d = hp["lr"], hp["momentum"], hp["dampening"]
        if not mu:
            return heavy_ball(g, None, lr, 0.0)[0], TorchOptimState(step, None, None, None)
        updates, buf = heavy_ball(tree.scale(1 - d, g) if d else g, state.momentum, lr, mu)
        if d:  # torch's first step: buf = g, undamped (a select: 0·∞ would make NaN)
            import torch

            first = step == 1
            buf = tree.map(lambda a, b: torch.where(first, a, b), g, buf)
            updates = heavy_ball(buf, None, lr, 0.0)[0]
        if hp["nesterov"]:
            updates = heavy_ball(g, buf, lr, mu)[0]
        return updates, TorchOptimState(step, buf, None, None)

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

    # IterativeSolver: vmapped over a Batch (the step count it reads back is shared by the tasks)
    vectorizable = True
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
