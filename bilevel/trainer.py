r"""The outer loop: sample a meta-batch, take its hypergradient, step an outer optimizer, record.

.. math:: θ_{s+1} = θ_s + \mathrm{update}\big(∇_θ F(θ_s; \mathcal{B}_s)\big), \qquad
          \mathcal{B}_s = \mathrm{tasks}(s), \quad s = 0, …, S − 1

where ``F`` is the configuration's outer objective (the mean over a :class:`~bilevel.Batch`,
whose tasks :func:`bilevel.hypergrad` vectorises) and ``update`` any optax-style gradient
transformation (``solvers.Adam``, ``solvers.SGD``, ``torchopt.adam``, ``optax.adam``, …).
A :class:`History` keeps the outer loss of every step and the metrics of ``evaluate``;
``History.plot`` draws them (with matplotlib: ``pip install matplotlib``). The progress bar is
tqdm's where tqdm is installed, else a plain line every tenth of the run.

Two ways a run can stop early hand back what it has, as ``.trained`` (a :class:`Trained` with the
History so far and the last finite meta-parameters) and ``.step`` of the exception:
:class:`OuterStepDiverged` (an outer update made the meta-parameters non-finite) and
:class:`FitInterrupted` (Ctrl-C: a ``KeyboardInterrupt``, so an uncaught one still stops the
program; catch it to keep the partial result).
"""

from __future__ import annotations

import math
import reprlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from bilevel import tree
from bilevel.backends import Backend, backend_for
from bilevel.hypergrad import Batch, hypergrad
from bilevel.recipes import Config
from bilevel.result import Info, Result
from bilevel.solvers import optim
from bilevel.validate import count

__all__ = ["FitInterrupted", "History", "OuterStepDiverged", "Trained", "fit"]

Tree = Any
OUTER_LOSS = "outer_loss"


class History:
    """Named series of ``(step, value)`` pairs: ``"outer_loss"`` and the evaluated metrics.

    Example:
        >>> h = History()
        >>> h.record("accuracy", 0, 0.2); h.record("accuracy", 100, 0.9)
        >>> h.series("accuracy"), h.last("accuracy"), h.names
        (([0, 100], [0.2, 0.9]), 0.9, ['accuracy'])
    """

    def __init__(self) -> None:
        self._series: dict[str, tuple[list[int], list[float]]] = {}

    def record(self, name: str, step: int, value: float) -> None:
        """Append ``value`` at ``step`` to the series ``name``."""
        steps, values = self._series.setdefault(name, ([], []))
        steps.append(step)
        values.append(float(value))

    @property
    def names(self) -> list[str]:
        """The recorded series, in the order they first appeared."""
        return list(self._series)

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of ``name`` (copies).

        Raises:
            KeyError: naming the recorded series, if ``name`` is not one of them.
        """
        if name not in self._series:
            raise KeyError(f"History.series: no series {name!r}; recorded: {self.names}")
        steps, values = self._series[name]
        return list(steps), list(values)

    def last(self, name: str) -> float:
        """The latest value of ``name``."""
        return self.series(name)[1][-1]

    def __repr__(self) -> str:
        parts = [f"{k}: {len(v[1])} points, last {v[1][-1]:.4g}" for k, v in self._series.items()]
        return f"History({'; '.join(parts)})"

    def plot(self, path: str | Path, names: list[str] | None = None, *, smooth: int = 1) -> Path:
        """Save one panel per series (``names``: all by default) to ``path``; return the path.

        Args:
            path: the image file (its suffix picks the format).
            names: the series to draw.
            smooth: a trailing moving-average window over the outer loss (1: raw values).

        Raises:
            ImportError: if matplotlib is missing (``pip install matplotlib``, or the
                ``examples`` extra: ``pip install 'bilevel[examples]'``).
            KeyError: for an unknown name.
        """
        count("History.plot", "smooth", smooth, 1)
        try:
            from matplotlib.figure import Figure
        except ImportError as e:  # tests/test_install.py runs this without matplotlib
            raise ImportError(
                "History.plot needs matplotlib, which bilevel does not install by default: "
                "pip install matplotlib (or pip install 'bilevel[examples]', which includes it)"
            ) from e
        chosen = self.names if names is None else names
        fig = Figure(figsize=(4.5 * max(len(chosen), 1), 3.4), layout="constrained")
        axes = fig.subplots(1, max(len(chosen), 1), squeeze=False)[0]
        for ax, name in zip(axes, chosen, strict=False):
            steps, values = self.series(name)
            ax.plot(steps, values, lw=0.6 if smooth > 1 and name == OUTER_LOSS else 1.2, alpha=0.8)
            if smooth > 1 and name == OUTER_LOSS and len(values) >= smooth:
                means = [
                    sum(values[i - smooth : i]) / smooth for i in range(smooth, len(values) + 1)
                ]
                ax.plot(steps[smooth - 1 :], means, lw=1.6, label=f"mean of {smooth}")
                ax.legend()
            ax.set_title(name)
            ax.set_xlabel("outer step")
            ax.grid(alpha=0.3)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
        return out


class Trained(NamedTuple):
    """What :func:`fit` returns: the final meta-parameters and the :class:`History`."""

    meta: Tree
    history: History


class FitInterrupted(KeyboardInterrupt):
    """:func:`fit` was interrupted (Ctrl-C); ``trained`` holds what it had.

    A ``KeyboardInterrupt``, so that Ctrl-C still stops a script (or a sweep over many ``fit``
    calls) unless the caller decides otherwise; catching it keeps the partial result::

        try:
            out = fit(config, meta, tasks, optimizer=opt, steps=10_000)
        except FitInterrupted as stop:
            out = stop.trained

    Attributes:
        step: the outer step that was running (``steps`` if the final evaluation was).
        trained: ``Trained(meta, history)``: the meta-parameters after ``step`` updates and the
            History of those steps. A ``torch.optim``-style optimizer interrupted inside its own
            ``step()`` may have updated some of its tensors only.
    """

    def __init__(self, message: str, step: int, trained: Trained) -> None:
        super().__init__(message)
        self.step = step
        self.trained = trained


class OuterStepDiverged(RuntimeError):
    """An outer update of :func:`fit` made the meta-parameters non-finite.

    Attributes:
        step: the outer step whose update diverged (its hypergradient was finite).
        trained: ``Trained(meta, history)`` with the meta-parameters before that update (a copy
            for a ``torch.optim``-style optimizer, which has already overwritten its tensors)
            and the History up to and including that step's outer loss.
    """

    def __init__(self, message: str, step: int, trained: Trained) -> None:
        super().__init__(message)
        self.step = step
        self.trained = trained


class _Progress(Protocol):
    def update(self, n: int = 1, /) -> object: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...

    def close(self) -> None: ...


class _PlainProgress:
    """The progress bar without tqdm: one line on stderr every tenth of the run."""

    def __init__(self, total: int, desc: str) -> None:
        self._total, self._desc, self._done, self._postfix = total, desc, 0, ""
        self._every = max(1, total // 10)

    def update(self, n: int = 1, /) -> None:
        self._done += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = s
        if self._done % self._every == 0 or self._done == self._total:
            print(
                f"{self._desc}: {self._done}/{self._total} outer steps, {s}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        pass


def _progress(total: int, desc: str) -> _Progress:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: tests/test_install.py runs fit without it
        return _PlainProgress(total, desc)
    return tqdm(total=total, desc=desc, dynamic_ncols=True)


def _describe(optimizer: Any) -> str:
    """A one-line name for ``optimizer`` (torch.optim's repr spans many lines)."""
    if _stateful(optimizer):
        lrs = sorted({g["lr"] for g in optimizer.param_groups if isinstance(g, dict) and "lr" in g})
        return f"{type(optimizer).__name__}(lr={', '.join(f'{lr:g}' for lr in lrs)})"
    text = repr(optimizer)
    return text if len(text) <= 160 and "\n" not in text else type(optimizer).__name__


_PLAIN = (RuntimeError, ValueError)  # hypergrad's own errors (not a subclass with other fields)


def _largest(backend: Backend, meta: Tree) -> float:
    """``max |θ_i|`` over every entry of ``meta`` (0 for no entries), on the host."""
    return max(
        (float(np.abs(a).max()) for a in map(backend.to_numpy, tree.leaves(meta)) if a.size),
        default=0.0,
    )


def _grown(backend: Backend, meta: Tree, scale: float) -> float | None:
    """``max |θ_i|`` if it grew more than 1000-fold since the start (from at least 1), else None:
    a failure then may well come from diverging outer steps rather than from the task."""
    now = _largest(backend, meta)
    return now if now > 1e3 * max(scale, 1.0) else None


def _metrics(evaluate: Callable[[Tree], Any], meta: Tree, step: int) -> list[tuple[str, float]]:
    """``evaluate(meta)`` as ``(name, number)`` pairs, or a TypeError naming ``evaluate``."""
    out = evaluate(meta)
    if not isinstance(out, Mapping):
        raise TypeError(
            f"fit: evaluate must return a mapping {{name: number}}, got {reprlib.repr(out)} "
            f"(at outer step {step}); e.g. evaluate=lambda meta: {{'accuracy': float(acc)}}"
        )
    pairs: list[tuple[str, float]] = []
    for name, value in out.items():
        number: float | None = None
        if not isinstance(value, (str, bytes)):
            try:
                number = float(value)
            except (TypeError, ValueError, RuntimeError):
                number = None
        if number is None:
            raise TypeError(
                f"fit: evaluate returned a non-number for {name!r}: {reprlib.repr(value)} (at "
                f"outer step {step}); each value must be a real number or a one-element array, "
                f"e.g. {{{name!r}: float(value)}}"
            )
        pairs.append((str(name), number))
    return pairs


def _stateful(optimizer: object) -> bool:
    """A ``torch.optim``-style optimizer: it owns its tensors and steps them in place."""
    return all(callable(getattr(optimizer, a, None)) for a in ("step", "zero_grad")) and hasattr(
        optimizer, "param_groups"
    )


def _check(config: object, tasks: object, optimizer: object, evaluate: object, cb: object) -> None:
    if not isinstance(config, Config):
        raise TypeError(
            f"fit: config must be a bilevel.recipes.Config(problem, solver, strategy), got "
            f"{config!r}; e.g. recipes.maml(predict, loss, lr=0.01, steps=1)"
        )
    if not callable(tasks):
        raise TypeError(f"fit: tasks must be a function step -> task or Batch, got {tasks!r}")
    transform = all(callable(getattr(optimizer, a, None)) for a in ("init", "update"))
    if isinstance(optimizer, type) or not (transform or _stateful(optimizer)):
        raise TypeError(
            f"fit: optimizer must be an optax-style transformation (init(params), update(grads, "
            f"state, params)) or a torch.optim-style optimizer over the meta tensors, got "
            f"{optimizer!r}; e.g. solvers.Adam(lr=1e-3), torchopt.adam(1e-3), "
            "torch.optim.Adam(meta.values(), lr=1e-3)"
        )
    for name, fn in (("evaluate", evaluate), ("callback", cb)):
        if fn is not None and not callable(fn):
            raise TypeError(f"fit: {name} must be callable or None, got {fn!r}")


def _check_owned(optimizer: Any, meta: Tree) -> list[Any]:
    """The meta leaves, each of which the stateful ``optimizer`` must hold (by identity)."""
    groups = [g["params"] if isinstance(g, dict) else g for g in optimizer.param_groups]
    held = {id(p) for group in groups for p in group}  # torch: dicts; torchopt: tuples
    leaves = tree.leaves(meta)
    missing = [i for i, leaf in enumerate(leaves) if id(leaf) not in held]
    if missing:
        raise TypeError(
            f"fit: the optimizer {type(optimizer).__name__} does not hold meta leaves {missing} "
            f"of {tree.structure(meta)}; a torch.optim-style optimizer steps the tensors it was "
            "built on, so build it on the meta tensors themselves, e.g. "
            "torch.optim.Adam(meta.values(), lr=1e-3)"
        )
    return leaves


def _apply(optimizer: Any, grads: Tree, state: Any, meta: Tree) -> tuple[Tree, Any]:
    updates, state = optim.update(optimizer, grads, state, meta)
    return tree.add(meta, updates), state


def _step_in_place(optimizer: Any, leaves: list[Any], grads: Tree) -> None:
    for leaf, g in zip(leaves, tree.leaves(grads), strict=True):
        leaf.grad = g
    optimizer.step()
    for leaf in leaves:  # no stale hypergradient left on the caller's tensors
        leaf.grad = None


def _step_of(
    config: Config, optimizer: Any, backend: Backend, batched: bool, eager: dict[str, Result]
) -> Any:
    """One outer step as a pure function of arrays, for the backend to compile:
    ``(meta, state, data) -> (value, grad, params, task_values, meta', state', finite)``,
    with ``finite`` the device-side flags (hypergradient, updated meta) the host checks. Where
    the step runs eagerly (a backend that does not compile, or a step it cannot trace) the whole
    :class:`Result`, diagnostics included, is left in ``eager["result"]``."""

    def step(meta: Tree, state: Any, data: Tree) -> tuple[Any, ...]:
        task = Batch(data) if batched else data
        res = hypergrad(config.problem, config.solver, meta, task, strategy=config.strategy)
        if not backend.is_traced(res.value):
            eager["result"] = res
        updated, state = _apply(optimizer, res.grad, state, meta)
        finite = (
            backend.all_finite((res.value, res.grad, res.params)),
            backend.all_finite(updated),
        )
        return res.value, res.grad, res.params, res.task_values, updated, state, finite

    return step


def fit(
    config: Config,
    meta: Tree,
    tasks: Callable[[int], Any],
    *,
    optimizer: Any,
    steps: int,
    evaluate: Callable[[Tree], Mapping[str, float]] | None = None,
    every: int = 0,
    callback: Callable[[int, Tree, Result], None] | None = None,
    progress: bool = True,
    desc: str = "meta-training",
    compiled: bool = True,
) -> Trained:
    """Run ``steps`` outer steps of ``optimizer`` on the hypergradient of ``config``.

    Compilation. With an optax-style ``optimizer`` on a backend that compiles (JAX), each outer
    step, the hypergradient and the optimizer's update together, runs as one ``jax.jit``
    program (``compiled=True``, the default), traced once per task shape; the host then checks
    the step's outputs (a non-finite hypergradient is recomputed eagerly to locate its step,
    an update that makes θ non-finite raises :class:`OuterStepDiverged`). A step ``jax.jit``
    cannot trace (``Implicit``, whose linear solvers stop on a host-side test; a SciPy inner
    solver; non-array task leaves; a loss that branches on values) runs eagerly, with the same
    numbers. Losses must be pure functions: a compiled step reads globals once, at its trace.
    ``compiled=False`` runs every step eagerly. On torch steps always run eagerly:
    ``torch.compile`` of the same step is exact and 1.6× faster per step on the MAML sinusoid
    setup but takes 43 s to compile, a gain only after ~19,000 steps
    (``benchmarks/results/fit_step_cpu.md``).

    Args:
        config: ``Config(problem, solver, strategy)``, e.g. from :mod:`bilevel.recipes`.
        meta: the initial meta-parameters (a pytree).
        tasks: ``step -> task`` or ``step -> Batch(tasks)``, the meta-batch of step ``step``.
        optimizer: an optax-style transformation (``init(params)``,
            ``update(grads, state, params) -> (updates, state)``: ``meta`` is never modified
            in place), or a ``torch.optim``-style optimizer (``torch.optim.Adam``,
            ``torchopt.Adam``, …) built on the meta tensors themselves, which it steps in
            place after setting their ``.grad`` to the hypergradient.
        steps: the number of outer steps S ≥ 0.
        evaluate: ``meta -> {name: value}``, recorded before the first step and every
            ``every`` steps (``every=0``: only after the last step), and after the last step.
        every: the evaluation interval, ≥ 0.
        callback: ``(step, meta, result)`` after each step, with the meta-parameters that
            ``result`` was computed at (e.g. to carry an agent's adapted parameters forward).
        progress: show a progress bar with the running outer loss (tqdm's where tqdm is
            installed, else a plain line on stderr every tenth of the run).
        desc: the progress bar's label.
        compiled: compile each outer step on JAX (see above); ``False`` runs it eagerly. No
            effect on torch, or with a ``torch.optim``-style optimizer.

    Returns:
        ``Trained(meta, history)``; ``history.series("outer_loss")`` holds the value of the
        outer objective at each step's meta-parameters (before that step's update).

    Raises:
        TypeError / ValueError: for ill-typed arguments (naming the fix), and a TypeError
            naming ``evaluate`` if it returns anything but a mapping of names to numbers.
        OuterStepDiverged: a RuntimeError, if an outer update makes the meta-parameters
            non-finite; it names the step and the optimizer and carries ``.trained``.
        RuntimeError / ValueError: from :func:`bilevel.hypergrad` if a hypergradient is not
            finite (prefixed with the outer step when the meta-parameters grew 1000-fold
            before it, which points at the outer optimizer).
        FitInterrupted: a KeyboardInterrupt, on Ctrl-C; it carries ``.trained``, the History
            so far and the last meta-parameters.

    Example:
        >>> import torch
        >>> from bilevel import solvers
        >>> from bilevel import recipes
        >>> from bilevel.trainer import fit
        >>> cfg = recipes.maml(lambda p, x: p["w"] * x, lambda p, y: ((p - y) ** 2).mean(),
        ...                    lr=0.1, steps=1)
        >>> x = torch.linspace(-1, 1, 8)
        >>> task = recipes.FewShot(x, 3 * x, x, 3 * x)
        >>> out = fit(cfg, {"w": torch.tensor(0.0)}, lambda step: task,
        ...           optimizer=solvers.SGD(lr=0.5), steps=50, progress=False)
        >>> out.history.series("outer_loss")[1][0] > 1.0 > 1e-6 > out.history.last("outer_loss")
        True
    """
    _check(config, tasks, optimizer, evaluate, callback)
    count("fit", "steps", steps, 0)
    count("fit", "every", every, 0)
    backend = backend_for(meta, what="fit")
    history = History()
    owned = _check_owned(optimizer, meta) if _stateful(optimizer) else None
    state: Any = None
    if owned is None:
        meta = backend.untape(meta)
        state = optimizer.init(meta)

    def record_metrics(step: int) -> None:
        if evaluate is not None:
            for name, value in _metrics(evaluate, meta, step):
                history.record(name, step, value)

    def diverged(step: int, last: Tree, grad: Tree) -> OuterStepDiverged:
        gnorm = math.sqrt(backend.to_float(tree.vdot(grad, grad)))
        return OuterStepDiverged(
            f"fit: outer step {step} of {_describe(optimizer)} made the meta-parameters "
            f"non-finite (its hypergradient was finite, norm {gnorm:.3g}); lower its learning "
            "rate or clip the hypergradient, e.g. solvers.chain(solvers.ClipByGlobalNorm(1.0), "
            "solvers.Adam(lr=1e-3)); the error's .trained holds the History and the last finite "
            "meta-parameters",
            step,
            Trained(last, history),
        )

    # the compiled step, one per kind of task (one task or a Batch); None: eager steps
    fast: dict[bool, Any] | None = {} if compiled and owned is None else None
    eager: dict[str, Result] = {}  # the full Result of a step that ran eagerly
    plain = Info(strategy=repr(config.strategy))
    scale = _largest(backend, meta)
    bar = _progress(steps, desc) if progress else None
    running = math.nan
    step = 0
    try:
        if every and steps:
            record_metrics(0)
        for step in range(steps):
            task = tasks(step)
            out: tuple[Any, ...] | None = None
            try:
                if fast is not None:
                    batched = isinstance(task, Batch)
                    if batched not in fast:
                        fast[batched] = backend.compiled(
                            _step_of(config, optimizer, backend, batched, eager)
                        )
                    data = task.tasks if batched else task
                    eager.clear()
                    ran: tuple[Any, ...] = fast[batched](meta, state, data)
                    if backend.host_bool(ran[-1][0]) is False:
                        # eagerly again: hypergrad's host checks locate the failure and raise
                        hypergrad(
                            config.problem, config.solver, meta, task, strategy=config.strategy
                        )
                        raise RuntimeError(
                            f"fit: outer step {step}: the compiled step's hypergradient is not "
                            "finite but the eager one is; run the steps eagerly with "
                            "fit(..., compiled=False)"
                        )
                    out = ran
                if out is None:
                    result = hypergrad(
                        config.problem, config.solver, meta, task, strategy=config.strategy
                    )
                elif "result" in eager:  # ran eagerly: keep its diagnostics
                    result = eager["result"]
                else:  # compiled: strategies that trace report no host-side diagnostics
                    value, grad, params, values = out[:4]
                    n = int(values.shape[0])
                    result = Result(value, grad, params, plain, (plain,) * n, values)
            except (RuntimeError, ValueError) as err:
                grown = _grown(backend, meta, scale) if step and type(err) in _PLAIN else None
                if grown is None:
                    raise
                raise type(err)(
                    f"fit: outer step {step}: {err}; the largest |meta-parameter| grew from "
                    f"{scale:.3g} to {grown:.3g} after {step} outer step{'s' * (step > 1)} of "
                    f"{_describe(optimizer)}: if they diverged, lower its learning rate or clip "
                    "the hypergradient, e.g. solvers.chain(solvers.ClipByGlobalNorm(1.0), "
                    "solvers.Adam(lr=1e-3))"
                ) from err
            loss = backend.to_float(result.value)
            history.record(OUTER_LOSS, step, loss)
            if callback is not None:
                callback(step, meta, result)
            if owned is None:
                if out is None:
                    updated, state = _apply(optimizer, result.grad, state, meta)
                    finite = backend.all_finite(updated)
                else:
                    updated, state, finite = out[4], out[5], out[6][1]
                if backend.host_bool(finite) is False:
                    raise diverged(step, meta, result.grad)
                meta = updated
            else:
                # the optimizer overwrites the caller's tensors: keep a copy to hand back
                last = tree.map(lambda x: x * 1, backend.stop_gradient(meta))
                _step_in_place(optimizer, owned, result.grad)
                if backend.host_bool(backend.all_finite(owned)) is False:
                    raise diverged(step, last, result.grad)
            running = loss if math.isnan(running) else 0.98 * running + 0.02 * loss
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"outer loss {running:.4g}", refresh=False)
            if every and (step + 1) % every == 0 and step + 1 < steps:
                record_metrics(step + 1)
        step = steps
        record_metrics(steps)
    except KeyboardInterrupt as interrupt:
        raise FitInterrupted(
            f"fit: interrupted at outer step {step} of {steps}; the exception's .trained holds "
            "the History so far and the meta-parameters it reached",
            step,
            Trained(meta, history),
        ) from interrupt
    finally:
        if bar is not None:
            bar.close()
    return Trained(meta, history)
