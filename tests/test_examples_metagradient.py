"""examples/metagradient_returns.py at a tiny size: the meta-gradient moves the discounts the
right way (Xu et al. 2018's toy; the full-size targets are checked by running the example)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from _examples import load_example

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "metagradient_returns.py"


def _load() -> ModuleType:
    return load_example(EXAMPLE, "metagradient_returns")


@pytest.mark.parametrize("seed", [0, 1])
def test_discounts_into_noise_fall_and_into_signal_rise(
    seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = _load()
    out = example.main(
        ["--steps", "300", "--seed", str(seed), "--out", str(tmp_path), "--no-progress"]
    )
    noise, signal = out["noise"], out["signal"]
    assert len(noise) == 4 and len(signal) == 5  # γ_1, γ_3, γ_5, γ_7 and γ_0, γ_2, …, γ_8
    assert float(noise.mean()) < float(signal.mean())
    assert bool((noise < 0.5).all()), f"γ's into noise did not fall below their start: {noise}"
    assert float(out["final"][-1]) == 0.5  # γ_9 leads into the end of the episode: no gradient
    assert out["forward_mode_difference"] < 1e-12  # ForwardMode() equals Unrolled()
    assert out["held_out"]["learned γ"] < out["held_out"]["γ = 1 (undiscounted)"]
    assert out["plot"].exists()
    printed = capsys.readouterr().out
    assert "PASS" in printed or "FAIL" in printed
    assert "a short run" in printed
