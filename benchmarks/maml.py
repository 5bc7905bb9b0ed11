#!/usr/bin/env python
"""MAML meta-gradient benchmark on CPU: bilevel vs higher, torchopt and hand-written torch.func.

One meta-gradient of MAML on sinusoid regression (network 1-40-40-1 ReLU, 25 tasks of 10 support
and 10 query points, inner SGD with lr 0.01 for K steps, float32), computed five ways:

    (a) bilevel, vmap      hypergrad(Problem, GradientDescent, Unrolled(), Batch(tasks))
    (b) bilevel, loop      hypergrad per task in a Python loop, gradients averaged
    (c) higher             innerloop_ctx + torch.optim.SGD per task, outer loss .backward()
    (d) torchopt           functional torchopt.sgd + apply_updates(inplace=False) per task
    (e) torch.func         vmap over tasks of K torch.func.grad steps, grad_and_value of the mean

The script first checks that all five give the same meta-gradient (max abs difference <= 1e-4,
exit status 1 otherwise), then times each (warm-up, then the median and min of interleaved
repetitions), then measures each one's peak resident memory in a fresh subprocess. A second
part compares the memory of Unrolled() and Implicit(CG(maxiter=5)) on an iMAML problem (inner loss
+ lambda/2 ||phi - theta||^2, lambda = 2) for K = 20 and 100.

Usage:
    python benchmarks/maml.py            # full run, writes benchmarks/results/maml_cpu.md
    python benchmarks/maml.py --quick    # a smoke run, writes benchmarks/results/maml_cpu_quick.md

See benchmarks/README.md for how to read the table.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import func as tf
from torch import nn

import bilevel
from bilevel import Batch, Implicit, Problem, Unrolled, hypergrad, solvers

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

N_TASKS = 25
N_SUPPORT = 10
N_QUERY = 10
INNER_LR = 0.01
IMAML_LAMBDA = 2.0
TOLERANCE = 1e-4  # max abs difference allowed between the meta-gradients (float32)

Params = dict[str, torch.Tensor]
GradFn = Callable[[], Params]


# --------------------------------------------------------------------------- the problem


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)
    )


def net(p: Params, x: torch.Tensor) -> torch.Tensor:
    """The 1-40-40-1 ReLU network of ``make_model`` as a pure function of its parameters."""
    h = F.relu(F.linear(x, p["0.weight"], p["0.bias"]))
    h = F.relu(F.linear(h, p["2.weight"], p["2.bias"]))
    return F.linear(h, p["4.weight"], p["4.bias"])


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean()


def make_tasks(seed: int = 1) -> dict[str, torch.Tensor]:
    """25 sinusoids ``y = A sin(x + b)``, A ~ U[0.1, 5], b ~ U[0, pi], x ~ U[-5, 5]."""
    g = torch.Generator().manual_seed(seed)
    amp = torch.empty(N_TASKS, 1, 1).uniform_(0.1, 5.0, generator=g)
    phase = torch.empty(N_TASKS, 1, 1).uniform_(0.0, torch.pi, generator=g)
    xs = torch.empty(N_TASKS, N_SUPPORT, 1).uniform_(-5.0, 5.0, generator=g)
    xq = torch.empty(N_TASKS, N_QUERY, 1).uniform_(-5.0, 5.0, generator=g)
    return {
        "xs": xs,
        "ys": amp * torch.sin(xs + phase),
        "xq": xq,
        "yq": amp * torch.sin(xq + phase),
    }


@dataclass
class Setup:
    model: nn.Sequential  # holds θ for higher (its parameters are the meta-parameters)
    theta: Params  # θ as a plain dict of tensors (same values, no grad)
    tasks: dict[str, torch.Tensor]  # leading task axis
    task_list: list[dict[str, torch.Tensor]]  # the same tasks, split (for the loops)


def make_setup() -> Setup:
    model = make_model()
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    tasks = make_tasks()
    task_list = [{k: v[i] for k, v in tasks.items()} for i in range(N_TASKS)]
    return Setup(model, theta, tasks, task_list)


def maml_problem() -> Problem:
    return Problem(
        init=lambda meta, task: meta,
        inner_loss=lambda w, meta, task: mse(net(w, task["xs"]), task["ys"]),
        outer_loss=lambda w, meta, task: mse(net(w, task["xq"]), task["yq"]),
    )


def imaml_problem(lam: float = IMAML_LAMBDA) -> Problem:
    def inner(w: Params, meta: Params, task: dict[str, torch.Tensor]) -> torch.Tensor:
        prox = sum(((w[k] - meta[k]) ** 2).sum() for k in w)
        return mse(net(w, task["xs"]), task["ys"]) + 0.5 * lam * prox

    return Problem(
        init=lambda meta, task: meta,
        inner_loss=inner,
        outer_loss=lambda w, meta, task: mse(net(w, task["xq"]), task["yq"]),
    )


def _mean(grads: list[Params]) -> Params:
    return {k: torch.stack([g[k] for g in grads]).mean(0) for k in grads[0]}


# --------------------------------------------------------------------------- the five methods
# Each builder returns a zero-argument function computing the meta-gradient (a dict like θ).
# Everything that is set up once per training run (problem, solver, model) is built outside it.


def build_bilevel_vmap(s: Setup, k: int) -> GradFn:
    problem, solver = maml_problem(), solvers.GradientDescent(lr=INNER_LR, steps=k)
    batch = Batch(s.tasks)

    def run() -> Params:
        return hypergrad(problem, solver, s.theta, batch, strategy=Unrolled()).grad

    return run


def build_bilevel_loop(s: Setup, k: int) -> GradFn:
    problem, solver = maml_problem(), solvers.GradientDescent(lr=INNER_LR, steps=k)

    def run() -> Params:
        grads = [
            hypergrad(problem, solver, s.theta, task, strategy=Unrolled()).grad
            for task in s.task_list
        ]
        return _mean(grads)

    return run


def build_higher(s: Setup, k: int) -> GradFn:
    import higher

    model = s.model
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)

    def run() -> Params:
        model.zero_grad(set_to_none=True)
        for t in s.task_list:
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (
                fmodel,
                diffopt,
            ):
                for _ in range(k):
                    diffopt.step(mse(fmodel(t["xs"]), t["ys"]))
                (mse(fmodel(t["xq"]), t["yq"]) / N_TASKS).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}  # type: ignore[union-attr]

    return run


def build_torchopt(s: Setup, k: int) -> GradFn:
    import torchopt

    theta = {n: v.clone().requires_grad_() for n, v in s.theta.items()}
    names = list(theta)
    opt = torchopt.sgd(lr=INNER_LR)

    def run() -> Params:
        for v in theta.values():
            v.grad = None
        for t in s.task_list:
            phi = theta
            state = opt.init(phi)
            for _ in range(k):
                loss = mse(net(phi, t["xs"]), t["ys"])
                g = torch.autograd.grad(loss, [phi[n] for n in names], create_graph=True)
                updates, state = opt.update(dict(zip(names, g, strict=True)), state, inplace=False)
                phi = torchopt.apply_updates(phi, updates, inplace=False)
            (mse(net(phi, t["xq"]), t["yq"]) / N_TASKS).backward()
        return {n: v.grad.clone() for n, v in theta.items()}  # type: ignore[union-attr]

    return run


def build_torch_func(s: Setup, k: int) -> GradFn:
    def adapt_and_evaluate(theta: Params, task: dict[str, torch.Tensor]) -> torch.Tensor:
        phi = theta
        for _ in range(k):
            g = tf.grad(lambda p: mse(net(p, task["xs"]), task["ys"]))(phi)
            phi = {n: phi[n] - INNER_LR * g[n] for n in phi}
        return mse(net(phi, task["xq"]), task["yq"])

    def meta_loss(theta: Params) -> torch.Tensor:
        return tf.vmap(adapt_and_evaluate, in_dims=(None, 0))(theta, s.tasks).mean()

    grad_and_value = tf.grad_and_value(meta_loss)

    def run() -> Params:
        return grad_and_value(s.theta)[0]

    return run


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    build: Callable[[Setup, int], GradFn]


METHODS = [
    Method("bilevel_vmap", "(a) bilevel Unrolled, Batch (vmap)", build_bilevel_vmap),
    Method("bilevel_loop", "(b) bilevel Unrolled, loop over tasks", build_bilevel_loop),
    Method("higher", "(c) higher innerloop_ctx + SGD", build_higher),
    Method("torchopt", "(d) torchopt functional sgd", build_torchopt),
    Method("torch_func", "(e) hand-written torch.func", build_torch_func),
]
BY_KEY = {m.key: m for m in METHODS}


# ------------------------------------------------------------------- iMAML: Unrolled vs Implicit


def build_imaml(strategy_name: str) -> Callable[[Setup, int], GradFn]:
    def build(s: Setup, k: int) -> GradFn:
        problem = imaml_problem()
        solver = solvers.GradientDescent(lr=INNER_LR, steps=k)
        strategy = Unrolled() if strategy_name == "unrolled" else Implicit(solvers.CG(maxiter=5))
        batch = Batch(s.tasks)

        def run() -> Params:
            # With lr 0.01 the inner problem is not solved to stationarity in 20-100 steps and CG
            # stops after 5 iterations: bilevel warns about both, which is expected here.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", bilevel.BilevelWarning)
                return hypergrad(problem, solver, s.theta, batch, strategy=strategy).grad

        return run

    return build


IMAML = [
    Method("imaml_unrolled", "bilevel Unrolled(), Batch (vmap)", build_imaml("unrolled")),
    Method(
        "imaml_implicit",
        "bilevel Implicit(CG(maxiter=5)), Batch",
        build_imaml("implicit"),
    ),
]
BY_KEY.update({m.key: m for m in IMAML})


def implicit_diagnostics(s: Setup, k: int) -> str:
    """What bilevel reports about the Implicit solve of the iMAML batch (one line)."""
    problem, solver = imaml_problem(), solvers.GradientDescent(lr=INNER_LR, steps=k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", bilevel.BilevelWarning)
        res = hypergrad(
            problem, solver, s.theta, Batch(s.tasks), strategy=Implicit(solvers.CG(maxiter=5))
        )
    lin = [i.linear for i in res.task_info if i.linear is not None]
    stat = [i.stationarity for i in res.task_info if i.stationarity is not None]
    return (
        f"CG converged on {sum(li.converged for li in lin)}/{len(lin)} tasks, met negative "
        f"curvature on {sum(li.negative_curvature for li in lin)}/{len(lin)}; inner "
        f"stationarity ‖∇f(φ_K)‖ up to {max(stat):.2g}; {len(caught)} warnings per call"
    )


# --------------------------------------------------------------------------- measurement


def max_abs_diff(a: Params, b: Params) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def time_interleaved(
    fns: dict[str, GradFn],
    warmup: int,
    reps: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each function, repetitions interleaved across functions.

    Round r runs every function once, in an order rotated by r, so that a burst of load from
    another process on the machine hits all methods alike rather than one of them. ``clock`` is
    wall time by default; ``time.process_time`` (CPU time of this process) is steadier on a
    shared machine, but only meaningful with one torch thread.
    """
    keys = list(fns)
    for _ in range(warmup):
        for key in keys:
            fns[key]()
    times: dict[str, list[float]] = {key: [] for key in keys}
    for r in range(reps):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]
        for key in order:
            t0 = clock()
            fns[key]()
            times[key].append(clock() - t0)
    return times


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def child_memory(key: str, k: int, threads: int) -> dict[str, Any]:
    """In a fresh process: the peak RSS increase (MB) of one call of method ``key`` with K=k."""
    import resource

    torch.set_num_threads(threads)
    s = make_setup()
    build = BY_KEY[key].build
    build(s, 1)()  # warm-up with K=1: imports and first-call caches, not counted
    fn = build(s, k)
    _trim()
    reset = _reset_peak()
    base_kb = _status_kb("VmRSS") if reset else None
    if base_kb is None:  # no /proc: fall back to ru_maxrss (a high-water mark since start)
        reset = False
        base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    peak_kb = (_status_kb("VmHWM") if reset else None) or resource.getrusage(
        resource.RUSAGE_SELF
    ).ru_maxrss
    return {"peak_mb": (peak_kb - base_kb) / 1024, "method": "VmHWM" if reset else "ru_maxrss"}


def measure_memory(key: str, k: int, threads: int) -> float | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-memory", key, str(k)]
    cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"  memory of {key} K={k} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


# --------------------------------------------------------------------------- report


def cpu_name() -> str:
    name = platform.processor()
    if not name:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return f"{name or 'unknown'} ({platform.machine()}), os.cpu_count() = {os.cpu_count()}"


def git_commit() -> str:
    """The commit of the working tree the benchmark ran on (+ "-dirty" for local changes)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--exclude", "*"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="K in {1, 5}, 5 repetitions, iMAML timed once (~2 min)"
    )
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 10)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write")
    ap.add_argument("--child-memory", nargs=2, metavar=("METHOD", "K"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child_memory:
        print(
            json.dumps(child_memory(args.child_memory[0], int(args.child_memory[1]), args.threads))
        )
        return 0

    torch.set_num_threads(args.threads)
    ks = (1, 5) if args.quick else (1, 5, 20)
    imaml_ks = (20, 100)
    reps = args.reps or (5 if args.quick else 10)
    warmup = args.warmup or (1 if args.quick else 2)
    out = args.out or RESULTS / ("maml_cpu_quick.md" if args.quick else "maml_cpu.md")
    started = time.perf_counter()
    load_before = os.getloadavg()
    s = make_setup()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}")
    print(f"load average before: {load_before[0]:.2f}")

    # 1. verification -------------------------------------------------------------------
    diffs: dict[int, dict[str, float]] = {}
    gnorm: dict[int, float] = {}
    fns_by_k: dict[int, dict[str, GradFn]] = {}
    for k in ks:
        fns_by_k[k] = {m.key: m.build(s, k) for m in METHODS}
        ref = fns_by_k[k]["torch_func"]()
        gnorm[k] = max(float(v.abs().max()) for v in ref.values())
        diffs[k] = {}
        for m in METHODS:
            g = fns_by_k[k][m.key]()
            diffs[k][m.key] = max_abs_diff(g, ref)
            print(f"verify K={k:<3d} {m.label:<40s} max|g - g_torch.func| = {diffs[k][m.key]:.2e}")
    worst = max(d for per in diffs.values() for d in per.values())
    if not worst <= TOLERANCE:
        print(f"ABORT: the meta-gradients differ by {worst:.3g} > {TOLERANCE}", file=sys.stderr)
        return 1
    print(f"all meta-gradients agree (worst {worst:.2e} <= {TOLERANCE:g})")

    # 2. timing ----------------------------------------------------------------------------
    timing: dict[tuple[str, int], list[float]] = {}
    for k in ks:
        t0 = time.perf_counter()
        times = time_interleaved(fns_by_k[k], warmup, reps)
        for key, ts in times.items():
            timing[key, k] = ts
        print(f"timed K={k} in {time.perf_counter() - t0:.1f}s")
    imaml_warmup, imaml_reps = (0, 1) if args.quick else (1, max(3, reps // 3))
    imaml_timing: dict[tuple[str, int], list[float]] = {}
    imaml_diag: dict[int, str] = {}
    for k in imaml_ks:
        imaml_diag[k] = implicit_diagnostics(s, k)
        fns = {m.key: m.build(s, k) for m in IMAML}
        t0 = time.perf_counter()
        times = time_interleaved(fns, imaml_warmup, imaml_reps)
        for key, ts in times.items():
            imaml_timing[key, k] = ts
        print(f"timed iMAML K={k} in {time.perf_counter() - t0:.1f}s")

    # 3. memory (one fresh process per method and K) ------------------------------------------
    memory: dict[tuple[str, int], float | None] = {}
    if not args.no_memory:
        t0 = time.perf_counter()
        jobs = [(m.key, k) for k in ks for m in METHODS]
        jobs += [(m.key, k) for k in imaml_ks for m in IMAML]
        # Peak RSS is per process, so the subprocesses may run side by side (timing is done).
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            peaks = pool.map(lambda job: measure_memory(job[0], job[1], args.threads), jobs)
            memory = dict(zip(jobs, peaks, strict=True))
        print(f"measured memory in {len(memory)} subprocesses in {time.perf_counter() - t0:.1f}s")
    load_after = os.getloadavg()

    # 4. report ------------------------------------------------------------------------------
    lines = [
        "# MAML meta-gradient on CPU",
        "",
        f"Generated by `python benchmarks/maml.py{' --quick' if args.quick else ''}` "
        "(see `benchmarks/README.md`).",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, higher {pkg_version('higher')}, torchopt "
        f"{pkg_version('torchopt')}, bilevel {bilevel.__version__} (commit {git_commit()}), Python "
        f"{platform.python_version()}",
        f"- CPU: {cpu_name()}; torch.get_num_threads() = {torch.get_num_threads()}",
        f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        "(anything well above 0 means other processes shared the CPUs: trust min over median)",
        f"- problem: sinusoid regression, 1-40-40-1 ReLU MLP, {N_TASKS} tasks x "
        f"({N_SUPPORT} support + {N_QUERY} query), inner SGD lr {INNER_LR}, float32",
        f"- timing: {warmup} warm-up call(s), then {reps} interleaved repetitions per method "
        f"(iMAML: {imaml_warmup} warm-up, {imaml_reps} repetitions); wall clock",
        "- peak RSS: increase of the peak resident set size over the pre-call RSS, for one "
        "call in a fresh process",
        "",
        "## Agreement of the meta-gradients",
        "",
        "| K | max abs grad | " + " | ".join(m.label for m in METHODS) + " |",
        "|---:|---:|" + "---:|" * len(METHODS),
    ]
    for k in ks:
        row = " | ".join(f"{diffs[k][m.key]:.1e}" for m in METHODS)
        lines.append(f"| {k} | {gnorm[k]:.3g} | {row} |")
    lines += [
        "",
        f"(max abs difference to (e); the run aborts above {TOLERANCE:g})",
        "",
        "## Time and memory of one meta-gradient",
        "",
        "| method | K | median ms | min ms | × torch.func | × higher | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in ks:
        ref_func = statistics.median(timing["torch_func", k])
        ref_higher = statistics.median(timing["higher", k])
        for m in METHODS:
            ts = timing[m.key, k]
            med = statistics.median(ts)
            lines.append(
                f"| {m.label} | {k} | {med * 1e3:.1f} | {min(ts) * 1e3:.1f} | "
                f"{med / ref_func:.2f} | {med / ref_higher:.2f} | "
                f"{fmt(memory.get((m.key, k)))} |"
            )
    lines += [
        "",
        "Ratios are of medians at the same K (below 1 = faster than the reference).",
        "",
        "## iMAML: memory of Unrolled vs Implicit",
        "",
        f"Inner loss = support MSE + {IMAML_LAMBDA:g}/2 ‖φ − θ‖², φ₀ = θ, GradientDescent(lr="
        f"{INNER_LR}, steps=K). The two strategies differentiate different things (Unrolled: "
        "through the K steps; Implicit: the implicit-function theorem at φ_K), so their "
        "gradients are not compared.",
        "",
        "| strategy | K | median ms | min ms | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in imaml_ks:
        for m in IMAML:
            ts = imaml_timing[m.key, k]
            lines.append(
                f"| {m.label} | {k} | {statistics.median(ts) * 1e3:.1f} | {min(ts) * 1e3:.1f} "
                f"| {fmt(memory.get((m.key, k)))} |"
            )
    lines += [""]
    lines += [f"- Implicit, K = {k}: {imaml_diag[k]}" for k in imaml_ks]
    growth_ok = True
    if memory:
        lines.append("")
        for m in IMAML:
            lo, hi = memory.get((m.key, imaml_ks[0])), memory.get((m.key, imaml_ks[-1]))
            if lo is None or hi is None:
                continue
            lines.append(
                f"- {m.label}: peak RSS {lo:.1f} MB at K = {imaml_ks[0]} → {hi:.1f} MB at "
                f"K = {imaml_ks[-1]} (× {hi / max(lo, 0.1):.1f})"
            )
            if m.key == "imaml_implicit" and hi > 1.5 * lo + 5.0:
                growth_ok = False
                lines.append("  **FAIL: Implicit's memory grew with K; it should not.**")
    lines += ["", f"Total run time: {time.perf_counter() - started:.0f} s.", ""]
    text = "\n".join(lines)
    print()
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    if not growth_ok:
        print("FAIL: Implicit's peak memory grew with K", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
