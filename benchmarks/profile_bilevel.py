#!/usr/bin/env python
"""Where does bilevel spend the time that hand-written torch.func does not? An ablation.

Times one MAML meta-gradient (the problem of ``benchmarks/maml.py``) computed by

    full             hypergrad(problem, solver, θ, Batch(tasks), strategy=Unrolled())
    core             only the vmapped per-task computation inside hypergrad (strategy.compute
                     under backend.vmap, then the mean): no input checks, no finiteness check,
                     no per-task Info
    core, dict axpy  core with a dict fast path for bilevel.tree.axpy (the GD update), patched
                     into bilevel.tree inside this script only
    torch.func       the hand-written reference (e)

and the per-task loop (b): ``hypergrad`` per task, ``strategy.compute`` per task (no checks),
hand-written torch.func per task (no vmap), and higher. Each row gets its time (CPU time of this
process by default, steadier than wall time on a shared machine) and its number of aten operator
events per call (torch.profiler; deterministic). ``core`` reaches into bilevel internals
(``strategy.compute``, ``backend.vmap``) the way ``hypergrad`` calls them; it is a diagnostic,
not an API.

Then a cProfile of ``full`` (top functions by own time) shows the same from the other side.

Usage:
    python benchmarks/profile_bilevel.py [--k 1 5 20] [--reps 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import maml

from bilevel import Unrolled, solvers, tree
from bilevel.backends import backend_for


@contextlib.contextmanager
def fast_axpy() -> Iterator[None]:
    """bilevel.tree.axpy with a fast path for flat dicts of arrays (no flatten/unflatten)."""
    orig = tree.axpy

    def axpy(s: Any, x: Any, y: Any) -> Any:
        if type(x) is dict and type(y) is dict and x.keys() == y.keys():
            return {k: s * x[k] + y[k] for k in x}
        return orig(s, x, y)

    tree.axpy = axpy  # type: ignore[assignment]
    try:
        yield
    finally:
        tree.axpy = orig  # type: ignore[assignment]


def core(s: maml.Setup, k: int) -> Callable[[], Any]:
    """The vmapped part of hypergrad(Batch) alone, as hypergrad itself calls it."""
    problem, solver, strategy = (
        maml.maml_problem(),
        solvers.GradientDescent(maml.INNER_LR, k),
        Unrolled(),
    )
    backend = backend_for(s.theta, s.tasks)
    dims = tree.map(lambda x: 0, s.tasks)

    def one(m: Any, t: Any) -> Any:
        return tuple(strategy.compute(problem, solver, m, t, backend))

    mapped = backend.vmap(one, in_dims=(None, dims))

    def run() -> Any:
        _, grads, _, _ = mapped(s.theta, s.tasks)
        return tree.map(lambda g: g.mean(0), grads)

    return run


def wrap(ctx: Callable[[], contextlib.AbstractContextManager[None]], fn: Callable[[], Any]):
    def run() -> Any:
        with ctx():
            return fn()

    return run


def count_ops(fn: Callable[[], Any]) -> int:
    """aten operator events of one call (nested ones included), from torch.profiler: a count
    that, unlike time, does not depend on what else runs on the machine."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def loop_compute(s: maml.Setup, k: int) -> Callable[[], Any]:
    problem, solver, strategy = (
        maml.maml_problem(),
        solvers.GradientDescent(maml.INNER_LR, k),
        Unrolled(),
    )
    backend = backend_for(s.theta, s.tasks)

    def run() -> Any:
        grads = [strategy.compute(problem, solver, s.theta, t, backend).grad for t in s.task_list]
        return {n: torch.stack([g[n] for g in grads]).mean(0) for n in grads[0]}

    return run


def loop_torch_func(s: maml.Setup, k: int) -> Callable[[], Any]:
    """Hand-written torch.func one task at a time (no vmap): (b) without bilevel."""
    from torch import func as tf

    def one(theta: Any, task: Any) -> Any:
        phi = theta
        for _ in range(k):
            g = tf.grad(lambda p: maml.mse(maml.net(p, task["xs"]), task["ys"]))(phi)
            phi = {n: phi[n] - maml.INNER_LR * g[n] for n in phi}
        return maml.mse(maml.net(phi, task["xq"]), task["yq"])

    grad_one = tf.grad(one)

    def run() -> Any:
        grads = [grad_one(s.theta, t) for t in s.task_list]
        return {n: torch.stack([g[n] for g in grads]).mean(0) for n in grads[0]}

    return run


def implicit_breakdown(s: maml.Setup, k: int, reps: int, clock: Callable[[], float]) -> None:
    """Where Implicit's time goes on a Batch: the whole hypergradient against its forward inner
    solve run task by task and run under vmap (bilevel.solve), and against Unrolled. The linear
    solve stops on a host-side test, so it cannot be vmapped; the forward solve can."""
    from bilevel import Batch, Implicit, hypergrad, solve

    problem, solver = maml.imaml_problem(), solvers.GradientDescent(maml.INNER_LR, k)
    strategy = Implicit(solvers.CG(maxiter=5))

    def full() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hypergrad(problem, solver, s.theta, Batch(s.tasks), strategy=strategy)

    tasks = s.task_list
    variants: dict[str, Callable[[], Any]] = {
        "hypergrad(Batch), Implicit": full,
        "forward solve, per task": lambda: [solve(problem, solver, s.theta, t) for t in tasks],
        "forward solve, Batch (vmap)": lambda: solve(problem, solver, s.theta, Batch(s.tasks)),
        "hypergrad(Batch), Unrolled": maml.build_imaml("unrolled")(s, k),
    }
    times = maml.time_interleaved(variants, warmup=1, reps=reps, clock=clock)
    print(f"iMAML, K = {k}: median / min ms of {reps} runs")
    for n, ts in times.items():
        print(f"  {n:<30s} {statistics.median(ts) * 1e3:9.1f} {min(ts) * 1e3:9.1f}")
    print()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, nargs="*", default=[1, 5, 20])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: time.process_time (steady on a shared machine; needs --threads 1), wall",
    )
    ap.add_argument("--no-cprofile", action="store_true")
    ap.add_argument("--implicit-k", type=int, nargs="*", default=[20, 100])
    args = ap.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu sums the CPU time of all threads; use it with --threads 1")
    torch.set_num_threads(args.threads)
    s = maml.make_setup()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")

    for k in args.k:
        ref = maml.build_torch_func(s, k)
        variants: dict[str, Callable[[], Any]] = {
            "full": maml.build_bilevel_vmap(s, k),
            "core": core(s, k),
            "core, dict axpy": wrap(fast_axpy, core(s, k)),
            "torch.func": ref,
            "loop: hypergrad": maml.build_bilevel_loop(s, k),
            "loop: compute": loop_compute(s, k),
            "loop: torch.func": loop_torch_func(s, k),
            "loop: higher": maml.build_higher(s, k),
        }
        g_ref = ref()
        for name, fn in variants.items():  # the stripped variants must still be right
            err = maml.max_abs_diff(fn(), g_ref)
            if not err <= maml.TOLERANCE:
                print(f"K={k} {name}: differs from torch.func by {err:.2e}", file=sys.stderr)
                return 1
        times = maml.time_interleaved(variants, warmup=1, reps=args.reps, clock=clock)
        med = {n: statistics.median(ts) * 1e3 for n, ts in times.items()}
        ops = {n: count_ops(fn) for n, fn in variants.items()}
        print(f"K = {k}: {args.clock} time of {args.reps} interleaved runs, and aten ops per call")
        print(f"  {'':<18s} {'median ms':>10s} {'min ms':>9s} {'aten ops':>9s}")
        for n in variants:
            print(f"  {n:<18s} {med[n]:10.2f} {min(times[n]) * 1e3:9.2f} {ops[n]:9d}")
        print()

    for k in args.implicit_k:
        implicit_breakdown(s, k, max(3, args.reps // 3), clock)

    if not args.no_cprofile:
        k = args.k[-1]
        fn = maml.build_bilevel_vmap(s, k)
        fn()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(10):
            fn()
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("tottime").print_stats(30)
        print(f"cProfile of 10 × hypergrad(Batch), K = {k}, by own time:")
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
