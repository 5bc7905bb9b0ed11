#!/usr/bin/env python
"""One outer step of ``trainer.fit`` on the MAML sinusoid setup, on JAX and on torch.

The setup of ``examples/maml_sinusoid.py`` (1-40-40-1 ReLU MLP, 25 tasks of 10 support and 10
query points, one inner step of lr 0.01, outer Adam 1e-3, float32), the same meta-batches
(the example's ``meta_batches("maml", seed=0, 25)``) for every method, timed per outer step:

    JAX
    (a) fit, compiled step      fit(..., optimizer=optax.adam(1e-3)) (default compiled=True)
    (b) fit, compiled=False     every step eager
    (c) hand-written optax      jax.jit(value_and_grad of the vmapped MAML loss + optax.adam)
    torch
    (d) fit                     fit(..., optimizer=solvers.Adam(1e-3)) (eager)
    (e) the step, eager         fit's step function (hypergrad + Adam update) in a plain loop
    (f) the step, torch.compile torch.compile of that same function

Per-step times are the differences between consecutive calls of ``fit``'s callback (or of the
loop's iterations), each step synchronised on the host by reading its outer loss (as ``fit``
does for its History); the first steps (tracing, compilation) are reported separately and
left out of the median. The final meta-parameters of (a), (b) and (c), and of (e) and (f),
are compared (max abs difference, float32).

Usage:
    python benchmarks/fit_step.py            # writes benchmarks/results/fit_step_cpu.md
    python benchmarks/fit_step.py --quick    # 40 steps, no torch.compile; *_quick.md
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import itertools
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import bilevel
from bilevel import Batch, recipes, solvers
from bilevel import trainer as trainer_module
from bilevel.backends import backend_for
from bilevel.recipes import FewShot
from bilevel.trainer import fit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
sys.path.insert(0, str(HERE))
import maml as torch_bench  # noqa: E402  (git_commit, cpu_name)
import maml_sinusoid as example  # noqa: E402

RESULTS = HERE / "results"
N_TASKS = 25
WARM = 5  # steps left out of the per-step median (tracing and compilation)


def net_jax(p: dict[str, Any], x: Any) -> Any:
    """``examples/maml_sinusoid.net`` in ``jax.numpy``."""
    h = jax.nn.relu(x @ p["w0"].T + p["b0"])
    h = jax.nn.relu(h @ p["w1"].T + p["b1"])
    return h @ p["w2"].T + p["b2"]


def mse(pred: Any, target: Any) -> Any:
    return ((pred - target) ** 2).mean()


def _jax(t: Any) -> Any:
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v.numpy()), t)


def _stamps(run: Callable[[Callable[..., None]], Any]) -> tuple[list[float], Any]:
    """``run(callback)``; the per-step times between consecutive callbacks."""
    marks = [time.perf_counter()]
    out = run(lambda *a: marks.append(time.perf_counter()))
    return [b - a for a, b in itertools.pairwise(marks)], out


def _maxdiff(a: dict[str, Any], b: dict[str, Any]) -> float:
    def np_(x: Any) -> Any:
        return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    return max(float(np.abs(np_(a[k]) - np_(b[k])).max()) for k in a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 steps, no torch.compile")
    ap.add_argument("--steps", type=int, default=None, help="outer steps (default 200)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps or (40 if args.quick else 200)
    out_path = args.out or RESULTS / ("fit_step_cpu_quick.md" if args.quick else "fit_step_cpu.md")
    load_before = os.getloadavg()
    warnings.simplefilter("ignore")

    gen = torch.Generator().manual_seed(0)
    theta_t = example.init_params(gen)
    batches = example.meta_batches("maml", 0, N_TASKS)
    torch_tasks = [batches(s) for s in range(steps)]
    jax_data = [_jax(b.tasks) for b in torch_tasks]
    jax_tasks = [Batch(d) for d in jax_data]
    theta_j = _jax(theta_t)
    has_opt_out = "compiled" in inspect.signature(fit).parameters
    rows: list[tuple[str, list[float], dict[str, Any] | str]] = []

    # (a), (b): fit on JAX
    cfg_j = recipes.maml(net_jax, mse, lr=example.INNER_LR, steps=1)
    for label, kw in [("(a) JAX fit, compiled step", {"compiled": True}),
                      ("(b) JAX fit, compiled=False", {"compiled": False})]:  # fmt: skip
        if not has_opt_out:
            if kw["compiled"] is False:
                continue
            label, kw = "(a) JAX fit (this version has no compiled option)", {}
        ts, out = _stamps(
            lambda cb, kw=kw: fit(
                cfg_j,
                theta_j,
                lambda s: jax_tasks[s],
                optimizer=optax.adam(example.OUTER_LR),
                steps=steps,
                callback=cb,
                progress=False,
                **kw,
            )
        )
        rows.append((label, ts, out.meta))
        print(f"{label}: median {statistics.median(ts[WARM:]) * 1e3:.2f} ms/step")

    # (c): hand-written jitted optax step
    def adapt_eval(th: Any, task: FewShot) -> Any:
        g = jax.grad(lambda p: mse(net_jax(p, task.x_support), task.y_support))(th)
        phi = jax.tree_util.tree_map(lambda p, d: p - example.INNER_LR * d, th, g)
        return mse(net_jax(phi, task.x_query), task.y_query)

    opt = optax.adam(example.OUTER_LR)

    @jax.jit
    def hand_step(th: Any, state: Any, data: FewShot) -> tuple[Any, Any, Any]:
        loss, grad = jax.value_and_grad(
            lambda t: jax.vmap(adapt_eval, in_axes=(None, 0))(t, data).mean()
        )(th)
        updates, state = opt.update(grad, state, th)
        return optax.apply_updates(th, updates), state, loss

    th, state = theta_j, opt.init(theta_j)
    marks = [time.perf_counter()]
    for s in range(steps):
        th, state, loss = hand_step(th, state, jax_data[s])
        float(loss)
        marks.append(time.perf_counter())
    ts = [b - a for a, b in itertools.pairwise(marks)]
    rows.append(("(c) hand-written jax.jit + optax step", ts, th))
    print(f"(c): median {statistics.median(ts[WARM:]) * 1e3:.2f} ms/step")

    # (d): fit on torch
    cfg_t = example.config("maml")
    ts, out = _stamps(
        lambda cb: fit(
            cfg_t,
            theta_t,
            lambda s: torch_tasks[s],
            optimizer=solvers.Adam(example.OUTER_LR),
            steps=steps,
            callback=cb,
            progress=False,
        )
    )
    rows.append(("(d) torch fit", ts, out.meta))
    print(f"(d): median {statistics.median(ts[WARM:]) * 1e3:.2f} ms/step")

    # (e), (f): fit's step function on torch, eager and under torch.compile
    step_of = getattr(trainer_module, "_step_of", None)
    if step_of is not None:
        backend = backend_for(theta_t)
        step_fn = step_of(cfg_t, solvers.Adam(example.OUTER_LR), backend, True)
        candidates = [("(e) torch step, eager", step_fn)]
        if not args.quick:
            candidates.append(("(f) torch step, torch.compile", torch.compile(step_fn)))
        for label, fn in candidates:
            m, st = theta_t, solvers.Adam(example.OUTER_LR).init(theta_t)
            marks = [time.perf_counter()]
            try:
                for s in range(steps):
                    res = fn(m, st, torch_tasks[s].tasks)
                    float(res[0])
                    m, st = res[4], res[5]
                    marks.append(time.perf_counter())
            except Exception as err:  # torch.compile's failures are recorded, not hidden
                traceback.print_exc()
                rows.append((label, [], f"failed: {type(err).__name__}: {str(err)[:200]}"))
                continue
            ts = [b - a for a, b in itertools.pairwise(marks)]
            rows.append((label, ts, m))
            print(f"{label}: first {ts[0]:.2f} s, median {statistics.median(ts[WARM:]) * 1e3:.2f}")
    load_after = os.getloadavg()

    ref_j = next((r[2] for r in rows if r[0].startswith("(c)")), None)
    ref_t = next((r[2] for r in rows if r[0].startswith("(e)")), None)
    hand = statistics.median(next(r[1] for r in rows if r[0].startswith("(c)"))[WARM:])
    lines = [
        "# One outer step of `fit`, MAML sinusoid (CPU)",
        "",
        f"Generated by `python benchmarks/fit_step.py{' --quick' if args.quick else ''}` "
        "(docstring of that script: what each row runs).",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- jax {jax.__version__}, optax {optax.__version__}, torch {torch.__version__}, bilevel "
        f"{bilevel.__version__} (commit {torch_bench.git_commit()}), Python "
        f"{platform.python_version()}",
        f"- CPU: {torch_bench.cpu_name()}; torch.get_num_threads() = {torch.get_num_threads()}",
        f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}",
        f"- setup: examples/maml_sinusoid.py, {N_TASKS} tasks, 1 inner step, outer Adam "
        f"{example.OUTER_LR}, float32, {steps} outer steps on the same meta-batches",
        f"- per step: median and min over steps {WARM + 1}..{steps - 1}; the first step "
        "(tracing and compilation included) alone",
        "",
        "| method | first step s | median ms/step | min ms/step | × (c) | max abs diff of θ |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, ts, meta in rows:
        if isinstance(meta, str):
            lines.append(f"| {label} | – | – | – | – | {meta} |")
            continue
        ref = ref_j if label.startswith(("(a)", "(b)", "(c)")) else ref_t
        against = "(c)" if ref is ref_j else "(e)"
        diff = f"{_maxdiff(meta, ref):.1e} vs {against}" if ref is not None else "–"
        med = statistics.median(ts[WARM:])
        lines.append(
            f"| {label} | {ts[0]:.2f} | {med * 1e3:.2f} | {min(ts[WARM:]) * 1e3:.2f} | "
            f"{med / hand:.2f} | {diff} |"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
