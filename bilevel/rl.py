r"""Differentiable returns whose discount γ and trace parameter λ may be meta-parameters.

Conventions, shared by every function (Sutton & Barto 2018, §3.3, §7.1, §12.1, §12.8). A
segment of ``T ≥ 1`` transitions ``S_0 → S_1 → … → S_T``:

- ``rewards[t]`` is ``R_{t+1}``, the reward of the transition out of ``S_t`` (t = 0 … T−1);
- ``values[t]`` is ``v(S_t)`` for t = 0 … T: T + 1 entries, ``values[T]`` bootstraps the tail
  (0 where ``S_T`` is terminal, ``v(S_T)`` where the segment was cut off); ``values[0]`` is unused;
- ``gamma[t]`` and ``lam[t]`` are applied after transition t: ``G_t = R_{t+1} + γ_t G_{t+1}``.
  In S&B's notation for state-dependent γ and λ (§12.8) that is ``γ_t = γ(S_{t+1})`` and
  ``λ_t = λ(S_{t+1})``.

γ and λ may each be a number or a 0-d array (every transition), an array of shape ``(T,)`` (one
per transition), or, with ``states=`` (integers ``S_0 … S_T``, shape ``(T + 1,)``), a per-state
table: ``γ_t = gamma[states[t + 1]]``. An episode that ends inside the segment: set γ to 0 on
the transition entering its terminal state. Every function maps one segment (1-d arrays) to an
array of shape ``(T,)`` whose entry t belongs to ``S_t``; map a batch with the backend's
``vmap`` (``torch.func.vmap``). Only arithmetic, indexing and the backend's ``stack`` are used,
so ``grad``, ``jvp`` and ``vmap`` pass through, and γ, λ can be ``sigmoid(η)`` of meta-parameters.
γ and λ given as numbers are checked to lie in [0, 1]; arrays are not (that would read traced
values).
"""

from __future__ import annotations

from typing import Any

from bilevel.backends import backend_for
from bilevel.backends.base import Array, Backend
from bilevel.validate import count

__all__ = ["discounted_returns", "lambda_returns", "n_step_returns"]

Scalar = Array | float


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _shape(who: str, name: str, x: object, wanted: str) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(
            f"{who}: {name} must be {wanted}, got {type(x).__name__} ({x!r}); "
            "wrap it as an array: torch.tensor(...) or jax.numpy.asarray(...)"
        )
    return tuple(int(s) for s in shape)


def _length(who: str, rewards: Array) -> int:
    shape = _shape(who, "rewards", rewards, "an array of shape (T,) holding R_1 … R_T")
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(
            f"{who}: rewards must have shape (T,) with T >= 1 (one episode), got shape {shape}; "
            "map a batch of episodes with torch.func.vmap or jax.vmap"
        )
    return shape[0]


def _check_values(who: str, values: Array, t: int) -> None:
    shape = _shape(who, "values", values, f"an array of shape ({t + 1},) holding v(S_0) … v(S_T)")
    if shape != (t + 1,):
        raise ValueError(
            f"{who}: values must have shape ({t + 1},) (v(S_0) … v(S_T) for T = {t} rewards), got "
            f"shape {shape}; append the bootstrap value v(S_T) (0 if S_T is terminal)"
        )


def _check_states(who: str, states: Array | None, t: int) -> None:
    if states is None:
        return
    shape = _shape(who, "states", states, f"an integer array of shape ({t + 1},)")
    if shape != (t + 1,) or "int" not in str(getattr(states, "dtype", "")):
        raise ValueError(
            f"{who}: states must be an integer array of shape ({t + 1},) holding S_0 … S_T, got "
            f"shape {shape} and dtype {getattr(states, 'dtype', None)}; include the last state S_T"
        )


def _per_transition(
    who: str, name: str, x: Any, t: int, states: Array | None, backend: Backend
) -> list[Any]:
    """``x`` as a list of T per-transition values (numbers and 0-d arrays repeated).

    A per-state table is indexed by ``states[1:]``, checked to lie in the table wherever the
    states are known on the host (not inside ``jax.jit`` or a ``vmap``): JAX would clamp an
    out-of-range index silently and read another state's γ."""
    if _is_number(x):
        if not 0 <= x <= 1:
            raise ValueError(f"{who}: {name}={x!r} must lie in [0, 1], e.g. {name}=0.9")
        return [x] * t
    shape = _shape(who, name, x, "a number in [0, 1] or an array")
    if shape == ():
        return [x] * t
    if len(shape) == 1 and states is not None:
        index = states[1:]
        if backend.host_bool(((index >= 0) & (index < shape[0])).all()) is False:
            raise ValueError(
                f"{who}: states must index the {name} table of {shape[0]} entries, but "
                f"states[1:] holds values outside 0 … {shape[0] - 1}; give one {name} per state"
            )
        per = x[index]  # γ_t = table[S_{t+1}]
        return [per[i] for i in range(t)]
    if shape != (t,):
        raise ValueError(
            f"{who}: {name} has shape {shape}, but there are T = {t} transitions; pass a number, "
            f"a 0-d array, an array of shape ({t},) (one per transition), or a 1-d per-state "
            "table together with states=S_0 … S_T"
        )
    return [x[i] for i in range(t)]


def _bootstrap(who: str, bootstrap: Any) -> None:
    if not _is_number(bootstrap) and _shape(who, "bootstrap", bootstrap, "a number") != ():
        raise ValueError(
            f"{who}: bootstrap must be a number or a 0-d array v(S_T), got shape "
            f"{tuple(bootstrap.shape)}; pass bootstrap=values[-1]"
        )


def discounted_returns(
    rewards: Array, gamma: Scalar, bootstrap: Scalar = 0.0, *, states: Array | None = None
) -> Array:
    r"""The discounted return of every state of a segment (S&B eq. 3.9, with per-transition γ).

    .. math:: G_t = R_{t+1} + γ_t G_{t+1}, \quad t = T−1 … 0, \qquad G_T = \text{bootstrap}

    so ``G_t = Σ_{k=t}^{T−1} (Π_{j=t}^{k−1} γ_j) R_{k+1} + (Π_{j=t}^{T−1} γ_j) · bootstrap``.

    Args:
        rewards: ``(T,)``, ``rewards[t] = R_{t+1}``.
        gamma: γ: a number, a 0-d array, ``(T,)`` per transition, or a per-state table.
        bootstrap: ``G_T``, the value of what follows ``S_T`` (0: the episode ends at ``S_T``).
        states: ``(T + 1,)`` integer states ``S_0 … S_T``; makes a 1-d ``gamma`` a per-state
            table with ``γ_t = gamma[states[t + 1]]``.

    Returns:
        ``(T,)``: ``G_0 … G_{T−1}``.

    Raises:
        TypeError: if an argument is neither a number nor an array.
        ValueError: for a wrong shape, or a number γ outside [0, 1].

    Example:
        >>> import torch
        >>> from bilevel.rl import discounted_returns
        >>> r = torch.tensor([1.0, 2.0, 3.0])
        >>> discounted_returns(r, 0.5).tolist()  # G_2 = 3, G_1 = 2 + 1.5, G_0 = 1 + 1.75
        [2.75, 3.5, 3.0]
        >>> discounted_returns(r, torch.tensor([0.5, 0.0, 1.0]), bootstrap=4.0).tolist()
        [2.0, 2.0, 7.0]
    """
    who = "discounted_returns"
    t = _length(who, rewards)
    backend = backend_for(rewards, gamma, bootstrap, states, what=who)
    _check_states(who, states, t)
    gam = _per_transition(who, "gamma", gamma, t, states, backend)
    _bootstrap(who, bootstrap)
    ret: Any = bootstrap
    out: list[Any] = []
    for i in reversed(range(t)):
        ret = rewards[i] + gam[i] * ret
        out.append(ret)
    return backend.stack(out[::-1])


def n_step_returns(
    rewards: Array, values: Array, gamma: Scalar, n: int, *, states: Array | None = None
) -> Array:
    r"""The n-step return of every state (S&B eq. 7.1), truncated at the end of the segment.

    .. math:: G_{t:t+n} = R_{t+1} + γ_t R_{t+2} + … + (Π_{j=t}^{t+n−2} γ_j) R_{t+n}
              + (Π_{j=t}^{t+n−1} γ_j)\, v(S_{t+n})

    with ``t + n`` replaced by ``T`` where it exceeds it, so near the end (and for every t when
    ``n ≥ T``) it is the return bootstrapped from ``values[T]``. ``n = 1`` is the TD target.

    Args:
        rewards: ``(T,)``, ``rewards[t] = R_{t+1}``.
        values: ``(T + 1,)``, ``values[t] = v(S_t)``; ``values[T]`` is 0 for a terminal ``S_T``.
        gamma: γ, as for :func:`discounted_returns`.
        n: the number of rewards before bootstrapping, an int ≥ 1.
        states: as for :func:`discounted_returns`.

    Returns:
        ``(T,)``: ``G_{t:min(t+n, T)}`` for t = 0 … T−1.

    Raises:
        TypeError: for a non-int ``n`` or an argument that is neither a number nor an array.
        ValueError: for ``n < 1``, a wrong shape, or a number γ outside [0, 1].

    Example:
        >>> import torch
        >>> from bilevel.rl import n_step_returns
        >>> r, v = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0, 40.0])
        >>> n_step_returns(r, v, 0.5, 2).tolist()  # 1 + 0.5·2 + 0.25·30, 2 + 1.5 + 10, 3 + 20
        [9.5, 13.5, 23.0]
    """
    who = "n_step_returns"
    count(who, "n", n, 1, " (n=1 is the one-step TD target, n >= T the Monte-Carlo return)")
    t = _length(who, rewards)
    backend = backend_for(rewards, values, gamma, states, what=who)
    _check_values(who, values, t)
    _check_states(who, states, t)
    gam = _per_transition(who, "gamma", gamma, t, states, backend)
    out: list[Any] = []
    for i in range(t):
        end = min(i + n, t)
        ret: Any = values[end]
        for k in reversed(range(i, end)):
            ret = rewards[k] + gam[k] * ret
        out.append(ret)
    return backend.stack(out)


def lambda_returns(
    rewards: Array,
    values: Array,
    gamma: Scalar,
    lam: Scalar,
    *,
    states: Array | None = None,
) -> Array:
    r"""The λ-return of every state, recursively (S&B eq. 12.18; Xu et al. 2018, eq. 2).

    .. math:: g_t = R_{t+1} + γ_t (1 − λ_t)\, v(S_{t+1}) + γ_t λ_t\, g_{t+1}, \qquad
              g_T = v(S_T) = \text{values}[T]

    For constant γ, λ this equals S&B's eq. 12.3 over the segment,
    ``(1−λ) Σ_{n=1}^{T−t−1} λ^{n−1} G_{t:t+n} + λ^{T−t−1} G_{t:T}``. ``λ = 1`` gives the
    Monte-Carlo return bootstrapped from ``values[T]``; ``λ = 0`` gives the one-step TD target
    ``R_{t+1} + γ_t v(S_{t+1})``.

    Args:
        rewards: ``(T,)``, ``rewards[t] = R_{t+1}``.
        values: ``(T + 1,)``, ``values[t] = v(S_t)``; ``values[T]`` is 0 for a terminal ``S_T``.
        gamma: γ, as for :func:`discounted_returns`.
        lam: λ, in the same forms as γ.
        states: ``(T + 1,)`` integer states; makes 1-d ``gamma`` and ``lam`` per-state tables
            (``γ_t = gamma[states[t + 1]]``, ``λ_t = lam[states[t + 1]]``).

    Returns:
        ``(T,)``: ``g_0 … g_{T−1}``.

    Raises:
        TypeError: if an argument is neither a number nor an array.
        ValueError: for a wrong shape, or a number γ or λ outside [0, 1].

    Example:
        >>> import torch
        >>> from bilevel.rl import lambda_returns
        >>> r, v = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0, 40.0])
        >>> lambda_returns(r, v, 0.5, 0.5).tolist()  # g_2 = 3 + 0.5·40, g_1 = 2 + 0.5(15 + 11.5)
        [9.8125, 15.25, 23.0]
        >>> lambda_returns(r, v, 0.5, 0.0).tolist()  # TD targets R_{t+1} + γ v(S_{t+1})
        [11.0, 17.0, 23.0]
    """
    who = "lambda_returns"
    t = _length(who, rewards)
    backend = backend_for(rewards, values, gamma, lam, states, what=who)
    _check_values(who, values, t)
    _check_states(who, states, t)
    gam = _per_transition(who, "gamma", gamma, t, states, backend)
    lams = _per_transition(who, "lam", lam, t, states, backend)
    ret: Any = values[t]
    out: list[Any] = []
    for i in reversed(range(t)):
        ret = rewards[i] + gam[i] * ((1 - lams[i]) * values[i + 1] + lams[i] * ret)
        out.append(ret)
    return backend.stack(out[::-1])
