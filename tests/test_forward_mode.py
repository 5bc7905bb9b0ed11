"""ForwardMode's chunking: any chunk size gives the same hypergradient as Unrolled."""

from __future__ import annotations

import pytest
import torch

import solvers
from bilevel import Batch, ForwardMode, Problem, Unrolled, hypergrad

D = torch.float64
PROBLEM = Problem(
    init=lambda m, t: m["w"] * m["s"],
    inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2 + (w**4).sum() / 4 + m["s"] * w.sum(),
    outer_loss=lambda w, m, t: (w**2).sum() + m["s"] ** 2,
)
META = {"w": torch.tensor([0.3, -0.2, 0.5], dtype=D), "s": torch.tensor(1.5, dtype=D)}
GD = solvers.GradientDescent(lr=0.1, steps=6)


@pytest.mark.parametrize("chunk", [None, 1, 3, 4, 100])
def test_every_chunk_size_gives_the_unrolled_hypergradient(chunk: int | None) -> None:
    task = torch.tensor([1.0, -1.0, 0.5], dtype=D)
    ref = hypergrad(PROBLEM, GD, META, task, strategy=Unrolled())
    res = hypergrad(PROBLEM, GD, META, task, strategy=ForwardMode(chunk=chunk))
    # forward and reverse mode evaluate the same chain rule in another order: float64 rounding
    for k in META:
        torch.testing.assert_close(res.grad[k], ref.grad[k], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(res.params, ref.params, rtol=0, atol=0)
    assert float(res.value) == float(ref.value)


def test_chunked_forward_mode_under_a_batch() -> None:
    tasks = Batch(torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=D))
    ref = hypergrad(PROBLEM, GD, META, tasks, strategy=Unrolled())
    res = hypergrad(PROBLEM, GD, META, tasks, strategy=ForwardMode(chunk=2))
    for k in META:  # as above: float64 rounding
        torch.testing.assert_close(res.grad[k], ref.grad[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("chunk", "error"), [(0, ValueError), (-2, ValueError), (1.5, TypeError)])
def test_chunk_must_be_a_positive_int(chunk: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"ForwardMode\(chunk=.*\): chunk"):
        ForwardMode(chunk=chunk)  # type: ignore[arg-type]
