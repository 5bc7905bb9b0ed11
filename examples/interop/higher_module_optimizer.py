"""A higher user's inner loop, unchanged objects: an ``nn.Module`` and a ``torch.optim.SGD`` with
momentum, stepped by ``solvers.interop.Higher`` (higher's own differentiable SGD, made pure) on
MAML for sinusoid regression. Compared with higher's ``innerloop_ctx`` on the same module,
optimizer and tasks: the meta-gradients agree to ~1e-16 relative in float64 (tolerance 1e-10).

    python examples/interop/higher_module_optimizer.py [--steps 5] [--tasks 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import higher
import torch
from torch import nn

from bilevel import Batch, Problem, Unrolled, hypergrad
from bilevel.solvers.interop import Higher, from_module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/_setup.py
from _setup import add_threads_option, set_threads

TOLERANCE = 1e-10


def _sinusoids(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    amp = 0.1 + 4.9 * torch.rand(n, 1, 1, generator=gen, dtype=torch.float64)
    phase = math.pi * torch.rand(n, 1, 1, generator=gen, dtype=torch.float64)
    x = -5 + 10 * torch.rand(n, 20, 1, generator=gen, dtype=torch.float64)
    y = amp * torch.sin(x + phase)
    return {"xs": x[:, :10], "ys": y[:, :10], "xq": x[:, 10:], "yq": y[:, 10:]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="inner steps")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    add_threads_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="(nothing to show)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 1)).to(torch.float64)
    inner_opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    tasks = _sinusoids(args.tasks, gen)

    # higher, as its users write it
    total = torch.zeros((), dtype=torch.float64)
    for i in range(args.tasks):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fm, diffopt):
            for _ in range(args.steps):
                diffopt.step(((fm(tasks["xs"][i]) - tasks["ys"][i]) ** 2).mean())
            total = total + ((fm(tasks["xq"][i]) - tasks["yq"][i]) ** 2).mean()
    ref = torch.autograd.grad(total / args.tasks, list(model.parameters()))
    names = [n for n, _ in model.named_parameters()]
    ref = dict(zip(names, ref, strict=True))

    # bilevel: the same module and optimizer objects
    predict, meta = from_module(model)
    problem = Problem(
        init=lambda meta, task: meta,
        inner_loss=lambda p, meta, t: ((predict(p, t["xs"]) - t["ys"]) ** 2).mean(),
        outer_loss=lambda p, meta, t: ((predict(p, t["xq"]) - t["yq"]) ** 2).mean(),
    )
    solver = Higher(model, inner_opt, steps=args.steps)
    res = hypergrad(problem, solver, meta, Batch(tasks), strategy=Unrolled())

    scale = max(float(g.abs().max()) for g in ref.values())
    diff = max(float((res.grad[n] - ref[n]).abs().max()) for n in names) / scale
    agrees = diff <= TOLERANCE
    verdict = "agrees" if agrees else "DISAGREES"
    print(f"solvers.interop.Higher vs higher.innerloop_ctx (SGD, momentum 0.9, K={args.steps}):")
    print(f"  max |Δ meta-gradient| / max |ref| = {diff:.1e} (tolerance {TOLERANCE:g}): {verdict}")
    return {"relative_difference": diff, "tolerance": TOLERANCE, "agrees": agrees}


if __name__ == "__main__":
    main()
