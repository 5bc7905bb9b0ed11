"""Heavy-ball SGD is written once (``solvers.optim.heavy_ball``) and the three public ways to ask
for it agree: ``GradientDescent(momentum)``, ``SGD`` and the ``torch.optim.SGD`` bridge."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from bilevel import Problem, Unrolled, hypergrad, solvers
from bilevel.solvers.interop import from_torch_optim

D = torch.float64

PROBLEM = Problem(
    init=lambda m, t: m["w0"] * 1.0,
    inner_loss=lambda w, m, t: ((w - t) ** 2).sum() / 2 + (w**4).sum() / 4 + m["c"] * w.sum(),
    outer_loss=lambda w, m, t: (w**2).sum() + m["c"] ** 2,
)


def test_gradient_descent_with_momentum_is_sgd_bit_for_bit() -> None:
    meta = {"w0": torch.tensor([0.3, -0.7, 1.1], dtype=D), "c": torch.tensor(0.2, dtype=D)}
    task = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    gd = hypergrad(
        PROBLEM,
        solvers.GradientDescent(lr=0.1, steps=6, momentum=0.8),
        meta,
        task,
        strategy=Unrolled(),
    )
    sgd = hypergrad(
        PROBLEM,
        solvers.Optimizer(solvers.SGD(lr=0.1, momentum=0.8), 6),
        meta,
        task,
        strategy=Unrolled(),
    )
    # one implementation, the same operations in the same order: equal to the last bit
    assert torch.equal(gd.params, sgd.params)
    assert all(torch.equal(gd.grad[k], sgd.grad[k]) for k in meta)


@pytest.mark.parametrize(
    "options",
    [{"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.3}, {"momentum": 0.9, "nesterov": True}],
    ids=["momentum", "dampening", "nesterov"],
)
def test_torch_optim_bridge_keeps_an_infinite_gradient_infinite(options: dict[str, Any]) -> None:
    # torch.optim.SGD takes buf = g at the first step: an infinite gradient gives an infinite
    # buffer and step. The bridge mixed the first step in as 1·g + 0·later, and 0·∞ = NaN: it
    # returned NaN where torch returns −inf.
    w = torch.zeros(2, dtype=D, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.5, **options)
    transform = from_torch_optim(opt)
    state, params = transform.init(w.detach()), w.detach().clone()
    for g in ([1.0, math.inf], [2.0, 1.0]):
        grad = torch.tensor(g, dtype=D)
        w.grad = grad.clone()
        opt.step()
        updates, state = transform.update(grad, state, params)
        params = params + updates
        # equal where finite; the same infinity or NaN elsewhere
        torch.testing.assert_close(params, w.detach(), rtol=1e-15, atol=0, equal_nan=True)
    assert params[1].item() == -math.inf or math.isnan(w[1].item())
