"""A torchopt transform inside ``solvers.Optimizer``, unchanged: ``torchopt.adam`` as MAML's inner
optimizer. The reference is the same loop written with torchopt's functional API
(``transform.update(..., inplace=False)``, ``torchopt.apply_updates``) and ``torch.autograd``;
the meta-gradients agree to ~1e-16 relative in float64 (tolerance 1e-10).

    python examples/interop/torchopt_inner_transform.py [--steps 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchopt
from torch import nn

from bilevel import Problem, Unrolled, hypergrad, solvers
from bilevel.solvers.interop import from_module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/_setup.py
from _setup import add_threads_option, set_threads

TOLERANCE = 1e-10


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="inner steps")
    parser.add_argument("--seed", type=int, default=0)
    add_threads_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="(nothing to show)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(1, 40), nn.Tanh(), nn.Linear(40, 1)).to(torch.float64)
    x = torch.linspace(-5, 5, 20, dtype=torch.float64)[:, None]
    task = {"xs": x[::2], "ys": torch.sin(x[::2]), "xq": x[1::2], "yq": torch.sin(x[1::2])}
    predict, meta = from_module(model)

    def mse(p, x, y):
        return ((predict(p, x) - y) ** 2).mean()

    # torchopt's functional API, by hand
    theta = {k: v.clone().requires_grad_() for k, v in meta.items()}
    transform = torchopt.adam(0.01)
    params, state = theta, transform.init(theta)
    for _ in range(args.steps):
        grads = torch.autograd.grad(mse(params, task["xs"], task["ys"]), list(params.values()),
                                    create_graph=True)  # fmt: skip
        grads = dict(zip(params, grads, strict=True))
        updates, state = transform.update(grads, state, params=params, inplace=False)
        params = torchopt.apply_updates(params, updates, inplace=False)
    outer = mse(params, task["xq"], task["yq"])
    ref = dict(zip(theta, torch.autograd.grad(outer, list(theta.values())), strict=True))

    # bilevel: the same transform object inside solvers.Optimizer
    problem = Problem(
        init=lambda meta, t: meta,
        inner_loss=lambda p, meta, t: mse(p, t["xs"], t["ys"]),
        outer_loss=lambda p, meta, t: mse(p, t["xq"], t["yq"]),
    )
    solver = solvers.Optimizer(torchopt.adam(0.01), steps=args.steps)
    res = hypergrad(problem, solver, meta, task, strategy=Unrolled())

    scale = max(float(g.abs().max()) for g in ref.values())
    diff = max(float((res.grad[n] - ref[n]).abs().max()) for n in ref) / scale
    agrees = diff <= TOLERANCE
    verdict = "agrees" if agrees else "DISAGREES"
    print(f"solvers.Optimizer(torchopt.adam) vs torchopt's functional loop (K={args.steps}):")
    print(f"  max |Δ meta-gradient| / max |ref| = {diff:.1e} (tolerance {TOLERANCE:g}): {verdict}")
    return {"relative_difference": diff, "tolerance": TOLERANCE, "agrees": agrees}


if __name__ == "__main__":
    main()
