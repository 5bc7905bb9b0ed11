"""Constructor checks shared by the solvers: messages name the call, the value and the fix."""

from __future__ import annotations

import math


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


def count(who: str, name: str, value: object, minimum: int) -> None:
    """Raise unless ``value`` is an ``int`` ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{who}: {name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{who}: {name}={value} must be >= {minimum}")
