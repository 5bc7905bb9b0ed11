"""Constructor checks shared by strategies and solvers: messages name the call, the value, the fix.

A leaf module (it imports nothing from bilevel), so the ``solvers`` package may use it too.
"""

from __future__ import annotations

import inspect
import math

__all__ = ["callable_with", "count", "instance", "nonnegative", "positive", "relative_tolerance"]


def positive(who: str, name: str, value: object, example: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive finite real number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{who}: {name} must be a number, got {type(value).__name__} ({value!r})")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{who}: {name}={value!r} must be positive and finite, e.g. {example}")


def nonnegative(who: str, name: str, value: object, example: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{who}: {name} must be a number, got {type(value).__name__} ({value!r})")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{who}: {name}={value!r} must be >= 0 and finite, e.g. {example}")


def count(who: str, name: str, value: object, minimum: int, hint: str = "") -> None:
    """Raise unless ``value`` is an ``int`` ≥ ``minimum``; ``hint`` is appended to the message."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{who}: {name} must be an int, got {type(value).__name__} ({value!r}){hint}"
        )
    if value < minimum:
        raise ValueError(f"{who}: {name}={value} must be >= {minimum}{hint}")


def callable_with(who: str, name: str, fn: object, nargs: int, signature: str) -> None:
    """Raise ``TypeError`` unless ``fn`` is callable with ``nargs`` positional arguments."""
    if not callable(fn):
        raise TypeError(
            f"{who}: {name} must be a function {signature}, got {type(fn).__name__} ({fn!r})"
        )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: accept
        return
    try:
        sig.bind(*range(nargs))
    except TypeError:
        raise TypeError(
            f"{who}: {name} must accept {nargs} positional arguments {signature}, "
            f"but its signature is {sig}"
        ) from None


def relative_tolerance(who: str, name: str, value: object, example: str) -> None:
    """Raise unless ``0 < value < 1``: a tolerance on ``‖b − Ax‖/‖b‖``, which ``x = 0`` meets
    with 1 (a tolerance ≥ 1 would accept ``x = 0`` without an iteration)."""
    positive(who, name, value, example)
    if value >= 1:  # pyright: ignore[reportOperatorIssue]  # a number: checked just above
        raise ValueError(
            f"{who}: {name}={value!r} is a relative residual ‖b − Ax‖/‖b‖ and must be < 1 "
            f"(x = 0 already has residual 1), e.g. {example}"
        )


def instance(who: str, name: str, value: object, hint: str, *methods: str) -> None:
    """Raise ``TypeError`` if ``value`` is a class whose instances would have been accepted (its
    instances have every one of ``methods``, e.g. ``"__call__"``): the instance was meant.
    ``hint`` names the other accepted kinds (``" or a function (params, meta, task) -> …"``)."""

    def defines(cls: type, method: str) -> bool:  # by the class itself, not by object or type
        return any(method in vars(k) for k in cls.__mro__ if k is not object)

    if isinstance(value, type) and all(defines(value, m) for m in methods):
        raise TypeError(
            f"{who}: {name} is the class {value.__name__}; pass an instance{hint}, e.g. "
            f"{value.__name__}(...)"
        )
