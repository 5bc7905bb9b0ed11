"""Numerical building blocks that know nothing of bilevel problems.

Inner solvers (:class:`GradientDescent`, :class:`Optimizer`, :class:`UpdateRule`, :class:`Scipy`)
minimise or iterate on one task; linear solvers (:class:`CG`, :class:`Neumann`,
:class:`MINRES`, :class:`GMRES`, :class:`Direct`) solve the systems of implicit
differentiation. Each is a frozen dataclass whose fields are its hyperparameters.
"""

from solvers.inner import GradientDescent, Optimizer, Scipy, UpdateRule
from solvers.linear import CG, GMRES, MINRES, Direct, Neumann

__all__ = [
    "CG",
    "GMRES",
    "MINRES",
    "Direct",
    "GradientDescent",
    "Neumann",
    "Optimizer",
    "Scipy",
    "UpdateRule",
]
