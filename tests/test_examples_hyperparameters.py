"""examples/hyperparameters.py at a tiny size: the direction of its three results (the full-size
targets are checked by running the example).

The example is not a package module, so it is loaded from its path with importlib.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from _examples import load_example

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hyperparameters.py"

# Every hypergradient the example trains with claims to be exact; its accuracy sweeps silence
# LinearSolveWarning themselves, for the budgets too small to converge.
pytestmark = pytest.mark.filterwarnings("error::bilevel.BilevelWarning")


def _load() -> ModuleType:
    return load_example(EXAMPLE, "hyperparameters_example")


def test_hypergradient_accuracy_and_hyperparameter_optimisation(tmp_path: Path) -> None:
    tiny = "--max-iter 10 --ho-steps 3 --clean-train 100 --clean-val 60 --clean-steps 8"
    out = _load().main([*tiny.split(), "--out", str(tmp_path), "--no-progress"])

    # 1. ridge (d = 10): CG is exact but for roundoff after d iterations, and not after one
    ridge = out["ridge"]["rows"]
    cg = ridge["Implicit + CG"]
    assert cg[10] < 1e-8 < 1e-3 < cg[1]
    # ForwardMode computes Unrolled's hypergradient; both converge with K; FirstOrder returns 0
    for k, err in ridge["Unrolled, K GD steps"].items():
        assert abs(ridge["ForwardMode, K GD steps"][k] - err) <= 1e-9 * max(err, 1.0)
    assert ridge["Unrolled, K GD steps"][10] < ridge["Unrolled, K GD steps"][5]
    assert all(abs(e - 1) < 1e-12 for e in ridge["FirstOrder (biased), K GD steps"].values())
    assert ridge["Implicit + Direct (d matvecs)"][10] < 1e-10

    # 2. breast cancer, κ ≈ 150: the inner problem is solved to roundoff; CG reaches 1e-6 within
    # 30 matvecs; Neumann (O(κ) against CG's O(√κ)) is behind at every equal budget, by orders of
    # magnitude at 20; Adam on λ lowers the validation loss
    bc = out["logistic"]
    assert bc["stationarity"] < 1e-12
    assert bc["first"]["CG"] is not None and bc["first"]["CG"] <= 30
    for k in (1, 2, 5, 10, 20):
        assert bc["curves"]["Neumann"][k] > bc["curves"]["CG"][k]
    assert bc["curves"]["Neumann"][20] > 1e3 * bc["curves"]["CG"][20]
    assert bc["direct"] < 1e-10
    loss = bc["history"].series("outer_loss")[1]
    assert loss[-1] < loss[0]

    # 3. hyper-cleaning: the learned weights beat uniform weights on the validation loss they
    # were trained for, and down-weight corrupted examples more often than chance
    clean = out["cleaning"]
    assert clean["validation"]["bilevel"] < clean["validation"]["baseline"]
    assert clean["f1"] > 0.5
    weights, bad = clean["weights"], clean["bad"]
    assert float(weights[bad].mean()) < float(weights[~bad].mean())

    assert out["plot"].exists() and (tmp_path / "hyperparameters.md").exists()
