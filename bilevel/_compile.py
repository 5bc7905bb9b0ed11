"""Compiled functions kept with the user object they were built from.

A backend that compiles (JAX: ``jax.jit``) pays once per function and input shape, so a function
built for one user object (an inner loss, an update rule, a :class:`~bilevel.Problem`) must be
built once and reused, not rebuilt on every call. :func:`compiled_once` keeps it in a weak
dictionary keyed by that object: the entry goes when the object goes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any

from bilevel.backends.base import Backend

__all__ = ["compiled_once"]

# owner -> {(backend, key): compiled function}; entries go with the owner.
_COMPILED: weakref.WeakKeyDictionary[Any, dict[tuple[Backend, Hashable], Callable[..., Any]]] = (
    weakref.WeakKeyDictionary()
)


def compiled_once(
    owner: Any,
    backend: Backend,
    key: Hashable,
    make: Callable[[Callable[[], Any]], Callable[..., Any]],
) -> Callable[..., Any]:
    """``backend.compiled(make(get))``, built once per ``(owner, backend, key)`` and kept while
    ``owner`` lives; ``get()`` returns the owner (through a weak reference, so the cached function
    never keeps its own key alive; callers hold the owner while they call it).

    An owner or key that cannot be used (unhashable, not weakly referenceable) gets ``make``
    uncompiled: compiling afresh on every call would cost more than running eagerly.
    """
    try:
        cache = _COMPILED.setdefault(owner, {})
        got = cache.get((backend, key))
    except TypeError:
        return make(lambda: owner)
    if got is None:
        ref = weakref.ref(owner)

        def get() -> Any:
            value = ref()
            if value is None:  # pragma: no cover - callers hold the owner while calling
                raise RuntimeError("a compiled function outlived the object it was built for")
            return value

        got = cache[(backend, key)] = backend.compiled(make(get))
    return got
