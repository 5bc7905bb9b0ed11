"""examples/synaptic_rule.py and examples/oja_rule.py at a tiny size: the meta-learned rules move
the right way (the full-size targets are checked by running the examples)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from _examples import load_example

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    return load_example(EXAMPLES / f"{name}.py", name)


def _falls(values: list[float], k: int) -> bool:
    return sum(values[-k:]) / k < sum(values[:k]) / k


def test_learned_synaptic_rule_beats_a_random_rule_on_held_out_functions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = _load("synaptic_rule")
    out = example.main(
        ["--steps", "40", "--meta-batch", "8", "--eval-starts", "4", "--randoms", "4",
         "--out", str(tmp_path), "--no-progress"]
    )  # fmt: skip
    acc = out["accuracy"]
    assert set(out["train"]).isdisjoint(out["held_out"]) and len(out["held_out"]) == 7
    assert acc["learned"]["held_out"] > acc["random (mean)"]["held_out"] + 0.2
    assert max(acc["learned"]["xor"], acc["learned"]["xnor"]) <= 0.75  # one unit cannot do XOR
    assert out["cosine"] > 0.5  # already leaning towards the delta rule
    assert _falls(out["history"].series("outer_loss")[1], 5)
    assert out["plot"].exists() and out["section"].exists()
    printed = capsys.readouterr().out
    assert "cosine(learned θ, delta rule" in printed and "a short run" in printed


def test_meta_learned_rule_moves_towards_oja(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = _load("oja_rule")
    out = example.main(
        ["--steps", "40", "--meta-batch", "16", "--horizon", "30", "--stream", "10",
         "--eval-tasks", "50", "--out", str(tmp_path), "--no-progress"]
    )  # fmt: skip
    _, held_out = out["history"].series("held-out loss")
    assert held_out[-1] < 0.75 * held_out[0]
    assert "θ_110" in out["order"][:2] and "θ_021" in out["order"][:3]  # Oja's two terms lead
    theta = out["theta"]
    assert float(theta[example.HEBB]) > 0 and float(theta[example.DECAY]) < 0
    results = out["results"]
    assert results["learned"]["loss"] < results["no plasticity (θ = 0)"]["loss"]
    assert results["learned"]["loss"] < results["random (mean)"]["loss"]
    assert results["learned"]["alignment"] > results["no plasticity (θ = 0)"]["alignment"]
    assert out["plot"].exists() and out["section"].exists()
    assert "θ_021/θ_110" in capsys.readouterr().out
