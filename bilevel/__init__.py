"""bilevel: hypergradients of bilevel problems, with the AD system, the inner solver and the
hypergradient strategy each swappable.

The public API::

    Problem, SemiGradient, PerStep, hypergrad, solve, Batch, Result, Info
    Unrolled, Truncated, FirstOrder, Implicit, ForwardMode
    BilevelWarning, LinearSolveWarning, StationarityWarning, SolverWarning

Inner and linear solvers live in the separate ``solvers`` package; ``bilevel.testing`` holds
``check_hypergrad``.
"""

from bilevel.diagnostics import (
    BilevelWarning,
    LinearSolveWarning,
    SolverWarning,
    StationarityWarning,
)
from bilevel.hypergrad import Batch, hypergrad, solve
from bilevel.problem import Problem
from bilevel.protocols import PerStep, SemiGradient
from bilevel.result import Info, Result
from bilevel.strategies import FirstOrder, ForwardMode, Implicit, Strategy, Truncated, Unrolled

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "BilevelWarning",
    "FirstOrder",
    "ForwardMode",
    "Implicit",
    "Info",
    "LinearSolveWarning",
    "PerStep",
    "Problem",
    "Result",
    "SemiGradient",
    "SolverWarning",
    "StationarityWarning",
    "Strategy",
    "Truncated",
    "Unrolled",
    "hypergrad",
    "solve",
]
