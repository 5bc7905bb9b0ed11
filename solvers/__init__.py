"""Numerical building blocks that know nothing of bilevel problems.

Inner solvers (:class:`GradientDescent`, :class:`Optimizer`, :class:`UpdateRule`, :class:`Scipy`)
minimise or iterate on one task; linear solvers (:class:`CG`, :class:`Neumann`,
:class:`MINRES`, :class:`GMRES`, :class:`Direct`) solve the systems of implicit
differentiation; :class:`SGD` and :class:`Adam` are pure optax-style gradient transformations
for the outer loop (``bilevel.trainer.fit``) or the inner one (``Optimizer``), combined with
:func:`chain`, :class:`ClipByGlobalNorm`, :class:`L1` and :class:`ScaleBySchedule`
(:class:`CosineDecay`). Each is a
frozen dataclass whose fields are its hyperparameters. :class:`Higher`,
:func:`from_torch_optim` and :func:`from_module` bring stateful PyTorch code (``nn.Module``,
``torch.optim``, higher's differentiable optimizers) into this functional form.
"""

from bilevel.solvers.compose import L1, Chain, ClipByGlobalNorm, CosineDecay, ScaleBySchedule, chain
from bilevel.solvers.inner import GradientDescent, Optimizer, Scipy, UpdateRule
from bilevel.solvers.interop import Higher, from_module, from_torch_optim, updated_buffers
from bilevel.solvers.linear import CG, GMRES, MINRES, Direct, Neumann
from bilevel.solvers.optim import SGD, Adam

__all__ = [
    "CG",
    "GMRES",
    "L1",
    "MINRES",
    "SGD",
    "Adam",
    "Chain",
    "ClipByGlobalNorm",
    "CosineDecay",
    "Direct",
    "GradientDescent",
    "Higher",
    "Neumann",
    "Optimizer",
    "ScaleBySchedule",
    "Scipy",
    "UpdateRule",
    "chain",
    "from_module",
    "from_torch_optim",
    "updated_buffers",
]
