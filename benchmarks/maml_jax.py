#!/usr/bin/env python
"""MAML meta-gradient on JAX: bilevel (eager and under jax.jit) vs hand-written JAX and torch.

The problem of ``benchmarks/maml.py`` (sinusoid regression, 1-40-40-1 ReLU MLP, 25 tasks of 10
support and 10 query points, inner SGD lr 0.01 for K steps, float32), same weights and tasks,
computed six ways in one process:

    (a) bilevel on JAX, eager    hypergrad(Problem, GradientDescent, Unrolled(), Batch(tasks)),
                                 nothing compiled (bilevel never compiles by itself)
    (b) bilevel on JAX, jax.jit  the same call inside jax.jit (host checks skipped while traced)
    (c) hand-written JAX, jit    jit(grad(mean over vmap of K jax.grad steps))
    (d) hand-written JAX, eager  the same function without jit
    (e) bilevel on torch         benchmarks/maml.py's (a): hypergrad on torch tensors (vmap)
    (f) hand-written torch.func  benchmarks/maml.py's (e): the reference of that benchmark

All six meta-gradients must agree with (f) to 1e-4 (float32; the run exits with status 1
otherwise). Then each is timed: the first call separately (it includes JAX's tracing and XLA
compilation), then warm-up calls and interleaved repetitions. Peak memory is not measured here:
XLA's allocator keeps freed buffers, so resident-set growth does not compare with torch's.

Usage:
    python benchmarks/maml_jax.py            # writes benchmarks/results/maml_jax_cpu.md
    python benchmarks/maml_jax.py --quick    # K in {1, 5}, 5 repetitions, writes *_quick.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

import bilevel
from bilevel import Batch, Problem, Unrolled, hypergrad, solvers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import maml as torch_bench  # the torch benchmark: same problem, data and weights

RESULTS = torch_bench.RESULTS
INNER_LR = torch_bench.INNER_LR
TOLERANCE = torch_bench.TOLERANCE

Params = dict[str, Any]
GradFn = Callable[[], Params]


def net(p: Params, x: Any) -> Any:
    """The 1-40-40-1 ReLU network of ``benchmarks/maml.py`` in ``jax.numpy``."""
    h = jax.nn.relu(x @ p["0.weight"].T + p["0.bias"])
    h = jax.nn.relu(h @ p["2.weight"].T + p["2.bias"])
    return h @ p["4.weight"].T + p["4.bias"]


def mse(pred: Any, target: Any) -> Any:
    return ((pred - target) ** 2).mean()


def _inner(w: Params, meta: Params, task: Params) -> Any:
    return mse(net(w, task["xs"]), task["ys"])


def _outer(w: Params, meta: Params, task: Params) -> Any:
    return mse(net(w, task["xq"]), task["yq"])


PROBLEM = Problem(init=lambda meta, task: meta, inner_loss=_inner, outer_loss=_outer)


def _to_jax(t: dict[str, torch.Tensor]) -> Params:
    return {k: jnp.asarray(v.detach().numpy()) for k, v in t.items()}


def builders(s: torch_bench.Setup, k: int) -> dict[str, GradFn]:
    theta, tasks = _to_jax(s.theta), _to_jax(s.tasks)
    solver = solvers.GradientDescent(lr=INNER_LR, steps=k)
    batch = Batch(tasks)

    def bilevel_eager() -> Params:
        return hypergrad(PROBLEM, solver, theta, batch, strategy=Unrolled()).grad

    jitted = jax.jit(
        lambda th, ts: hypergrad(PROBLEM, solver, th, Batch(ts), strategy=Unrolled()).grad
    )

    def adapt_and_evaluate(th: Params, task: Params) -> Any:
        phi = th
        for _ in range(k):
            g = jax.grad(lambda p: _inner(p, th, task))(phi)
            phi = {n: phi[n] - INNER_LR * g[n] for n in phi}
        return _outer(phi, th, task)

    def meta_loss(th: Params) -> Any:
        return jax.vmap(adapt_and_evaluate, in_axes=(None, 0))(th, tasks).mean()

    hand_jit = jax.jit(jax.grad(meta_loss))
    hand_eager = jax.grad(meta_loss)

    def block(fn: Callable[[], Params]) -> GradFn:
        return lambda: jax.block_until_ready(fn())

    return {
        "bilevel_jax": block(bilevel_eager),
        "bilevel_jax_jit": block(lambda: jitted(theta, tasks)),
        "jax_jit": block(lambda: hand_jit(theta)),
        "jax_eager": block(lambda: hand_eager(theta)),
        "bilevel_torch": torch_bench.build_bilevel_vmap(s, k),
        "torch_func": torch_bench.build_torch_func(s, k),
    }


LABELS = {
    "bilevel_jax": "(a) bilevel on JAX, eager",
    "bilevel_jax_jit": "(b) bilevel on JAX, inside jax.jit",
    "jax_jit": "(c) hand-written JAX, jax.jit",
    "jax_eager": "(d) hand-written JAX, eager",
    "bilevel_torch": "(e) bilevel on torch (vmap)",
    "torch_func": "(f) hand-written torch.func",
}


def max_abs_diff(a: Params, b: Params) -> float:
    return max(float(np.abs(np.asarray(a[n]) - np.asarray(b[n].detach())).max()) for n in b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="K in {1, 5}, 5 repetitions")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    ks = (1, 5) if args.quick else (1, 5, 20)
    reps = args.reps or (5 if args.quick else 10)
    warmup = 2
    out = args.out or RESULTS / ("maml_jax_cpu_quick.md" if args.quick else "maml_jax_cpu.md")
    load_before = os.getloadavg()
    s = torch_bench.make_setup()
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}")
    print(f"load average before: {load_before[0]:.2f}")

    diffs: dict[int, dict[str, float]] = {}
    first: dict[tuple[str, int], float] = {}
    timing: dict[tuple[str, int], list[float]] = {}
    for k in ks:
        fns = builders(s, k)
        ref = fns["torch_func"]()
        diffs[k] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bilevel warns about nothing here; keep output clean
            for key, fn in fns.items():
                t0 = time.perf_counter()
                g = fn()
                first[key, k] = time.perf_counter() - t0
                diffs[k][key] = max_abs_diff(g, ref)
                print(f"K={k:<3d} {LABELS[key]:<36s} first call {first[key, k]:6.2f} s, "
                      f"max|g - g_torch.func| = {diffs[k][key]:.2e}")  # fmt: skip
            worst = max(diffs[k].values())
            if not worst <= TOLERANCE:
                print(f"ABORT: meta-gradients differ by {worst:.3g} > {TOLERANCE}", file=sys.stderr)
                return 1
            times = torch_bench.time_interleaved(fns, warmup, reps)
        for key, ts in times.items():
            timing[key, k] = ts
        print(f"timed K={k}")
    load_after = os.getloadavg()

    lines = [
        "# MAML meta-gradient on JAX (CPU)",
        "",
        f"Generated by `python benchmarks/maml_jax.py{' --quick' if args.quick else ''}` "
        "(see `benchmarks/README.md`).",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, bilevel "
        f"{bilevel.__version__} (commit {torch_bench.git_commit()}), Python "
        f"{platform.python_version()}",
        f"- CPU: {torch_bench.cpu_name()}; torch.get_num_threads() = {torch.get_num_threads()}",
        f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        "(well above 0: other processes shared the CPUs; trust min over median)",
        "- problem: that of `benchmarks/maml.py` (same weights and tasks), float32",
        f"- timing: the first call alone (tracing and compilation included), then {warmup} "
        f"warm-up calls and {reps} interleaved repetitions per method; wall clock, "
        "`jax.block_until_ready` on JAX results",
        "",
        "| method | K | first call s | median ms | min ms | × hand-written JAX jit | "
        "max abs diff to (f) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in ks:
        ref = statistics.median(timing["jax_jit", k])
        for key, label in LABELS.items():
            ts = timing[key, k]
            med = statistics.median(ts)
            lines.append(
                f"| {label} | {k} | {first[key, k]:.2f} | {med * 1e3:.1f} | {min(ts) * 1e3:.1f} | "
                f"{med / ref:.2f} | {diffs[k][key]:.1e} |"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
