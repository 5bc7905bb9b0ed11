"""Hypergradient strategies: each a frozen dataclass whose fields are its hyperparameters."""

from bilevel.strategies.base import Outcome, ReverseModeOfMap, Strategy
from bilevel.strategies.first_order import FirstOrder
from bilevel.strategies.forward_mode import ForwardMode
from bilevel.strategies.implicit import Implicit
from bilevel.strategies.unrolled import Truncated, Unrolled

__all__ = [
    "FirstOrder",
    "ForwardMode",
    "Implicit",
    "Outcome",
    "ReverseModeOfMap",
    "Strategy",
    "Truncated",
    "Unrolled",
]
