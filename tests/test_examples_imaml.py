"""examples/imaml_linear_regression.py at a tiny size: the direction of its results.

The example is not a package module, so it is loaded from its path with importlib.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from types import ModuleType

import pytest
from _examples import load_example

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "imaml_linear_regression.py"

# The example's training must not warn: every meta-gradient it uses claims to be exact. (Its CG
# sweep silences LinearSolveWarning itself, for the iteration counts below d.)
pytestmark = pytest.mark.filterwarnings("error::bilevel.BilevelWarning")


def _load() -> ModuleType:
    return load_example(EXAMPLE, "imaml_linear_regression")


def test_imaml_example_cg_becomes_exact_and_meta_training_helps(tmp_path: Path) -> None:
    tiny = "--dim 3 --shots 5 --meta-steps 20 --meta-batch 2 --sweep-tasks 1 --test-tasks 50"
    out = _load().main([*tiny.split(), "--outer-lr", "0.1", "--out", str(tmp_path)])

    errors = out["cg_errors"]
    assert len(errors) == out["dim"] == 3
    # One task (--sweep-tasks 1): the meta-gradient error is λ‖v_k − v*‖, and CG's Euclidean error
    # is non-increasing in k (Hestenes & Stiefel 1952, Thm 6:3); slack for roundoff: 1e-8 relative.
    for before, after in itertools.pairwise(errors):
        assert after <= before * (1 + 1e-8) + 1e-14
    # d iterations on the d×d SPD system H + λI: exact but for roundoff, or stopped at CG's default
    # relative residual 1e-10 times κ(H + λI) (≲ 10 here): 1e-8 bounds both.
    assert errors[-1] < 1e-8
    assert errors[0] > 1e-6  # not vacuous: one iteration does not solve a generic 3×3 system

    # Meta-training moved θ towards the tasks' mean: adaptation from it beats adaptation from 0,
    # and nothing beats the oracle by more than sampling noise (same 50 test tasks for all three).
    assert out["loss_trained"] < out["loss_untrained"]
    assert out["loss_oracle"] < out["loss_untrained"]
    assert out["plot"].exists() and out["plot"].stat().st_size > 0
