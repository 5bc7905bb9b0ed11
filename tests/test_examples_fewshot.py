"""examples/fewshot_digits.py at a tiny size: the direction of its results (the full-size numbers
are checked by running the example).

The example is not a package module, so it is loaded from its path with importlib.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from _examples import load_example

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fewshot_digits.py"


def _load() -> ModuleType:
    return load_example(EXAMPLE, "fewshot_digits")


def test_task_sampling_keeps_test_digits_out_of_meta_training() -> None:
    example = _load()
    train, test = example.load_pools()
    assert len(train.names) == 28 and len(test.names) == 12
    assert {n.split("@")[0] for n in test.names} == {"3", "4", "7"}
    assert not {n.split("@")[0] for n in train.names} & {"3", "4", "7"}
    tasks = example.sample_tasks(test, 3, 5, 2, 4, torch.Generator().manual_seed(0))
    assert tasks.x_support.shape == (3, 10, 8, 8) and tasks.x_query.shape == (3, 20, 8, 8)
    for i in range(3):  # every label 0..4 appears `shots` (`query`) times; no image repeats
        assert torch.bincount(tasks.y_support[i]).tolist() == [2] * 5
        assert torch.bincount(tasks.y_query[i]).tolist() == [4] * 5
        images = torch.cat([tasks.x_support[i], tasks.x_query[i]]).flatten(1)
        assert torch.unique(images, dim=0).shape[0] == 30


def test_maml_beats_the_un_meta_trained_init(tmp_path: Path) -> None:
    tiny = "--shots 1 --methods maml --meta-steps 30 --test-tasks 100 --curve-tasks 30 --every 15"
    tiny += " --curvature-tasks 0 --check-tasks 0 --no-progress"
    out = _load().main([*tiny.split(), "--out", str(tmp_path)])
    run = out["runs"][1, "maml"]
    before, _ = out["untrained"][1, "maml"]  # the same 100 test tasks, adapted from θ₀
    # measured at this size: 80.7% against 75.6% (± 2.0 each; the difference is paired)
    assert run.accuracy > before + 0.02
    assert run.accuracy > 0.2 + 0.4  # chance is 20%
    steps, acc = run.history.series("test accuracy")
    assert steps == [0, 15, 30] and acc[-1] > acc[0]
    assert run.warnings == {}  # Unrolled() through 5 steps: nothing to warn about
    assert (tmp_path / "fewshot_digits.md").exists() and out["plot"].stat().st_size > 0


@pytest.mark.filterwarnings("error::bilevel.BilevelWarning")  # the example counts them itself
def test_fomaml_and_imaml_run_and_report_diagnostics(tmp_path: Path) -> None:
    tiny = "--shots 1 --methods fomaml imaml --meta-steps 2 --meta-batch 4 --imaml-steps 10"
    tiny += " --test-tasks 30 --curve-tasks 10 --every 0 --curvature-tasks 1 --check-tasks 5"
    out = _load().main([*tiny.split(), "--no-progress", "--out", str(tmp_path)])
    for method in ("fomaml", "imaml"):
        run = out["runs"][1, method]
        assert 0.2 < run.accuracy <= 1 and math.isfinite(run.ci)
        assert len(run.history.series("outer_loss")[1]) == 2
    imaml = out["runs"][1, "imaml"]
    # 10 inner steps do not solve iMAML's inner problem, and 5 CG steps do not reach CG's 1e-10:
    # hypergrad warned on both steps, and the example counted the warnings instead of raising
    assert imaml.warnings.get("StationarityWarning") == 2
    assert len(imaml.stationarity_steps) == len(imaml.residual_steps) == 2
    assert len(imaml.test_stationarity) == 30 and min(imaml.test_stationarity) > 1e-4
    assert math.isfinite(imaml.curvature) and imaml.curvature > 0
    assert out["relu_check"]["relu"] > 0 and out["relu_check"]["silu"] > 0
    assert "LinearSolveWarning" in (tmp_path / "fewshot_digits.md").read_text()
