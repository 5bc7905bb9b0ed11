"""examples/metagradient_cartpole.py at a tiny size: the meta-gradient of γ, λ through one
actor-critic step is exact (finite differences, float64), episode ends are handled, and a few
meta-training steps move η without NaNs. (Whether meta-learning beats the fixed γ, λ is measured
by running the example at full size, not asserted here.)"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from _examples import load_example

from bilevel import Unrolled, hypergrad
from bilevel.testing import check_hypergrad

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "metagradient_cartpole.py"
F64 = torch.float64


def _load() -> ModuleType:
    return load_example(EXAMPLE, "metagradient_cartpole")


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return _load()


def _task_with_episode_ends(
    example: ModuleType, meta: dict[str, torch.Tensor]
) -> tuple[Any, dict[str, Any]]:
    """A float64 agent on 3 environments whose episodes are cut at 6 steps: advance it until
    the trajectory τ holds a truncation and a masked reset step."""
    agent = example.make_agent(
        0, envs=3, steps=8, hidden=6, lr=0.05, dtype=F64, max_episode_steps=6
    )
    for _ in range(20):
        task = agent.task(meta)
        now = task["now"]
        if now["truncated"].any() and (now["valid"] == 0).any():
            return agent, task
        agent.carry(agent.pending["params"])
    raise AssertionError("no truncation within 20 segments")


def test_returns_handle_termination_and_truncation(example: ModuleType) -> None:
    # one environment, 4 transitions: terminated after t=0, reset step t=1 (masked), then
    # a truncation at t=3 that bootstraps from the last real state v(S_4)
    segment = {
        "rewards": torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=F64),
        "values": torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0]], dtype=F64),
        "terminated": torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64),
        "truncated": torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=F64),
    }
    g = example.returns(segment, 0.5, 0.5)[0]
    assert float(g[0]) == 1.0  # terminal: nothing follows
    assert float(g[3]) == 1.0 + 0.5 * 50.0  # truncated: R + γ v(S_T), λ_t = 0
    assert float(g[2]) == 1.0 + 0.5 * (0.5 * 40.0 + 0.5 * float(g[3]))


def test_meta_gradient_matches_finite_differences(example: ModuleType) -> None:
    meta = example.eta(0.9, 0.8, F64)
    agent, task = _task_with_episode_ends(example, meta)
    assert task["now"]["terminated"].sum() + task["now"]["truncated"].sum() > 0
    report = check_hypergrad(example.PROBLEM, agent.solver, meta, task, Unrolled())
    assert report.worst <= 1
    res = hypergrad(example.PROBLEM, agent.solver, meta, task, strategy=Unrolled())
    # both meta-parameters reach J' through θ' (not cut by a detach)
    assert abs(float(res.grad["gamma"])) > 1e-8 and abs(float(res.grad["lam"])) > 1e-8
    # Result.params is the θ' the agent sampled τ' with; carrying it moves the agent on
    agent.carry(res.params)
    assert agent.segment is task["next"]


def test_tiny_run_moves_eta_and_stays_finite(example: ModuleType, tmp_path: Path) -> None:
    tiny = "--updates 12 --seeds 1 --envs 2 --steps 6 --hidden 8 --meta-lr 0.05 --no-progress"
    out = example.main([*tiny.split(), "--out", str(tmp_path)])
    meta_run, base_run = out["runs"]["meta-gradient"][0], out["runs"]["baseline"][0]
    assert len(meta_run["gamma"]) == len(meta_run["lambda"]) == 13  # start + every update
    assert meta_run["gamma"][-1] != meta_run["gamma"][0]
    assert meta_run["lambda"][-1] != meta_run["lambda"][0]
    assert set(base_run["gamma"]) == {0.99} and set(base_run["lambda"]) == {0.95}
    for run in (meta_run, base_run):
        assert all(math.isfinite(x) for x in run["gamma"] + run["lambda"] + run["outer_loss"])
        assert all(bool(torch.isfinite(p).all()) for p in run["params"].values())
        assert run["episodes"] and all(r >= 1 for _, r in run["episodes"])
    assert out["plot"].exists() and out["plot"].stat().st_size > 0
    section = (tmp_path / "metagradient_cartpole.md").read_text()
    assert "meta-gradient" in section and "baseline" in section
