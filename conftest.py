"""Root pytest configuration: without JAX installed (``pip install 'bilevel[jax]'``), the JAX
backend module is left out of doctest collection instead of failing to import."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("jax") else ["bilevel/backends/jax.py"]
