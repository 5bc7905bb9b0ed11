"""examples/maml_sinusoid.py at a tiny size: the direction of its results, and the guard that
keeps a diverging task out of the mean (the full-size targets are checked by running the
example with ``--iterations 70000``)."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from _examples import load_example

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "maml_sinusoid.py"


def _load() -> ModuleType:
    return load_example(EXAMPLE, "maml_sinusoid")


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return _load()


def test_tiny_run_lowers_the_adapted_loss_for_every_method(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = ["--iterations", "30", "--meta-batch", "5", "--eval-tasks", "20", "--no-progress"]
    out = example.main([*tiny, "--out", str(tmp_path)])
    stats = out["stats"]
    assert set(stats) == {"maml", "fomaml", "pretrained", "init"}
    for method in ("maml", "fomaml", "pretrained"):
        # The 1-step MSE on the held-out tasks fell from the untrained init (recorded at step 0,
        # the same θ₀ for every method) to the end of training.
        steps, values = out["histories"][method].series("held-out 1-step MSE")
        assert steps[0] == 0 and steps[-1] == 30
        assert all(math.isfinite(v) for v in values)
        assert values[-1] < values[0], (method, values)
        # On the 20 new evaluation tasks: finite, none diverged, and below the untrained init.
        for k in (0, 1, 5, 10):
            s = stats[method][k]
            assert math.isfinite(s.mean) and math.isfinite(s.ci) and s.nonfinite == 0
        assert stats[method][1].mean < stats["init"][1].mean
        assert stats[method][0].mean < stats["init"][0].mean
        _, losses = out["histories"][method].series("outer_loss")
        assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    # One adaptation step on the support points helps the meta-trained network.
    assert stats["maml"][1].mean < stats["maml"][0].mean
    assert all(t.wall > 0 and t.cpu > 0 for t in out["seconds_per_iteration"].values())
    assert out["plot"].exists() and out["plot"].stat().st_size > 0
    section = out["section"].read_text()
    assert "| MAML, this run (30 it.)" in section and "0.51 ± 0.04" in section
    printed = capsys.readouterr().out
    assert "paper MAML (K=5, 70k it.)" in printed and "a short run" in printed.lower()


def test_methods_option_trains_only_the_chosen_ones(example: ModuleType, tmp_path: Path) -> None:
    tiny = ["--iterations", "3", "--meta-batch", "2", "--eval-tasks", "3", "--no-progress"]
    out = example.main([*tiny, "--methods", "pretrained", "--out", str(tmp_path)])
    assert set(out["stats"]) == {"pretrained", "init"}
    assert set(out["seconds_per_iteration"]) == {"pretrained"}
    assert out["checks"] == []  # no MAML: no target applies


def test_a_diverging_task_is_counted_and_left_out_of_the_mean(
    example: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = example.sample_tasks(6, 10, 100, torch.Generator().manual_seed(0)).data
    # Task 0 gets targets of size 1e12: one step of α = 0.01 on its support points throws the
    # network's weights to ~1e11 and its predictions overflow float32 (the others stay tame).
    scale = torch.ones(6, 1, 1)
    scale[0] = 1e12
    diverging = tasks._replace(y_support=tasks.y_support * scale, y_query=tasks.y_query * scale)
    meta = example.init_params(torch.Generator().manual_seed(0))
    stats, _ = example.evaluate(meta, diverging, (0, 1, 10), name="diverging")
    assert stats[0].nonfinite == 0  # finite before adaptation (the MSE is large, not inf)
    for k in (1, 10):
        assert stats[k].nonfinite == 1 and stats[k].n == 5
        assert math.isfinite(stats[k].mean) and math.isfinite(stats[k].ci)
    # The mean is that of the five tame tasks exactly.
    tame, _ = example.evaluate(meta, example.FewShot(*(t[1:] for t in tasks)), (10,))
    assert stats[10].mean == pytest.approx(tame[10].mean, rel=1e-5)
    assert "1 of 6 tasks diverged" in capsys.readouterr().out

    # A huge step size at evaluation makes every task diverge: reported, and no NaN "mean" of
    # non-finite values masquerades as a result.
    stats, _ = example.evaluate(meta, tasks, (1,), lr=1e12)
    assert stats[1].nonfinite == 6 and stats[1].n == 0 and math.isnan(stats[1].mean)
    assert "6 of 6 tasks diverged" in capsys.readouterr().out

    s = example.summarise(torch.tensor([1.0, float("nan"), float("inf"), 3.0]))
    assert (s.mean, s.n, s.nonfinite) == (2.0, 2, 2)
