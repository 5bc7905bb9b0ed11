"""Numerical building blocks that know nothing of bilevel problems.

Inner solvers (:class:`GradientDescent`, :class:`Optimizer`, :class:`UpdateRule`, :class:`Scipy`)
minimise or iterate on one task; linear solvers (:class:`CG`, :class:`Neumann`,
:class:`MINRES`, :class:`GMRES`, :class:`Direct`) solve the systems of implicit
differentiation; :class:`SGD` and :class:`Adam` are pure optax-style gradient transformations
for the outer loop (``bilevel.trainer.fit``) or the inner one (``Optimizer``). Each is a
frozen dataclass whose fields are its hyperparameters.
"""

from solvers.inner import GradientDescent, Optimizer, Scipy, UpdateRule
from solvers.linear import CG, GMRES, MINRES, Direct, Neumann
from solvers.optim import SGD, Adam

__all__ = [
    "CG",
    "GMRES",
    "MINRES",
    "SGD",
    "Adam",
    "Direct",
    "GradientDescent",
    "Neumann",
    "Optimizer",
    "Scipy",
    "UpdateRule",
]
