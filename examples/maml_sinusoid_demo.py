"""MAML on sinusoid regression (Finn et al. 2017, §5.1) — a short CPU demonstration.

Tasks are ``y = A·sin(x − φ)`` with ``A ~ U[0.1, 5]``, ``φ ~ U[0, π]``, ``x ~ U[−5, 5]``; each task
gives K = 10 support and 10 query points. A 1-40-40-1 ReLU network (a pure function of a dict of
parameters) is adapted by one SGD step (α = 0.01) on the support points, and the meta-parameters
are trained with Adam (1e-3) on the query loss after adaptation, 25 tasks per meta-batch.

In ``bilevel`` terms MAML is a *configuration*, not a class::

    Problem(init=lambda meta, task: meta, inner_loss=<support MSE>, outer_loss=<query MSE>)
    solver   = solvers.GradientDescent(lr=0.01, steps=1)
    strategy = Unrolled()
    outer optimiser = torch.optim.Adam(meta.values(), lr=1e-3)

The pretrained baseline is the same network trained on the same tasks to minimise the query MSE
with no adaptation during training: the same problem with ``GradientDescent(steps=0)``. Both are
evaluated on new tasks after 0, 1, 5 and 10 steps of α = 0.01 on the K support points (MSE on
100 query points).

The default is a short run (5,000 meta-iterations), not the paper's 70,000 iterations:
compare it with the reference numbers printed beside it, not as a reproduction of them.

Run::

    python examples/maml_sinusoid_demo.py                    # the default short run (make demo)
    python examples/maml_sinusoid_demo.py --iterations 20000 # longer, closer to the paper
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import solvers
from bilevel import Batch, Problem, Unrolled, hypergrad, solve

Params = dict[str, torch.Tensor]
Task = dict[str, torch.Tensor]

# --------------------------------------------------------------------------- setup of the paper
AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)
K_SHOT = 10  # support points per task (the query set of a training task has as many)
EVAL_QUERY = 100  # query points per evaluation task
INNER_LR = 0.01  # α
OUTER_LR = 1e-3  # β (Adam)
EVAL_SEED = 20170309  # fixed: every run is evaluated on the same new tasks
EVAL_STEPS = (0, 1, 5, 10)
LAYERS = ((1, 40), (40, 40), (40, 1))

# (label, {steps: MSE}) from REFERENCES.md; ± are 95% intervals where given.
REFERENCE_ROWS: tuple[tuple[str, dict[int, str]], ...] = (
    ("paper MAML (K=5, 70k it.)", {1: "0.67", 5: "0.38", 10: "0.35"}),
    ("paper pretrained (K=5)", {1: "2.41", 5: "2.23", 10: "2.19"}),
    ("re-impl. MAML (K=10, 70k it.)", {1: "0.51 ± 0.04", 10: "0.24 ± 0.05"}),
)


# --------------------------------------------------------------------------- tasks and network
def sample_tasks(n: int, n_support: int, n_query: int, gen: torch.Generator) -> Task:
    """``n`` sinusoid tasks, every tensor with a leading task axis (a :class:`bilevel.Batch`)."""
    # One row of uniforms per task, so task i is the same whatever n is.
    u = torch.rand(n, 2 + n_support + n_query, generator=gen)
    amp = (AMPLITUDE[0] + (AMPLITUDE[1] - AMPLITUDE[0]) * u[:, :1]).view(n, 1, 1)
    phase = (PHASE[0] + (PHASE[1] - PHASE[0]) * u[:, 1:2]).view(n, 1, 1)
    x = (X_RANGE[0] + (X_RANGE[1] - X_RANGE[0]) * u[:, 2:]).view(n, -1, 1)
    x_s, x_q = x[:, :n_support], x[:, n_support:]
    return {
        "x_s": x_s,
        "y_s": amp * torch.sin(x_s - phase),
        "x_q": x_q,
        "y_q": amp * torch.sin(x_q - phase),
        "amp": amp.reshape(n),
        "phase": phase.reshape(n),
    }


def init_params(gen: torch.Generator) -> Params:
    """PyTorch's default ``nn.Linear`` init: weight and bias ~ U(−1/√fan_in, 1/√fan_in)."""
    params: Params = {}
    for i, (fan_in, fan_out) in enumerate(LAYERS):
        bound = 1.0 / math.sqrt(fan_in)
        params[f"w{i}"] = torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=gen)
        params[f"b{i}"] = torch.empty(fan_out).uniform_(-bound, bound, generator=gen)
    return params


def net(params: Params, x: torch.Tensor) -> torch.Tensor:
    """The 1-40-40-1 ReLU network as a pure function of its parameters; ``x`` is ``(n, 1)``."""
    h = torch.relu(x @ params["w0"].T + params["b0"])
    h = torch.relu(h @ params["w1"].T + params["b1"])
    return h @ params["w2"].T + params["b2"]


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean()


def support_loss(params: Params, meta: Params, task: Task) -> torch.Tensor:
    return mse(net(params, task["x_s"]), task["y_s"])


def query_loss(params: Params, meta: Params, task: Task) -> torch.Tensor:
    return mse(net(params, task["x_q"]), task["y_q"])


# MAML: the inner parameters start at the meta-parameters and descend the support loss; the
# outer level judges them on the query points.
MAML = Problem(init=lambda meta, task: meta, inner_loss=support_loss, outer_loss=query_loss)


# --------------------------------------------------------------------------- training
def pooled(tasks: Task) -> Task:
    """All tasks' points as one task: x and y of shape ``(n_tasks · n_points, 1)``."""
    return {k: tasks[k].reshape(-1, 1) for k in ("x_s", "y_s", "x_q", "y_q")}


def train(
    name: str,
    steps: int,
    meta: Params,
    iterations: int,
    meta_batch: int,
    seed: int,
) -> list[float]:
    """Train ``meta`` in place with Adam on the query loss after ``steps`` inner steps.

    ``steps = 1`` with ``Unrolled()`` is MAML; ``steps = 0`` is the pretrained baseline (the
    plain query MSE of the meta-parameters themselves). Returns the loss of every meta-batch.
    """
    solver = solvers.GradientDescent(lr=INNER_LR, steps=steps)
    # The meta tensors stay plain leaf tensors (requires_grad=False): hypergrad differentiates
    # with torch.func and returns res.grad detached; Adam only needs .grad to be set.
    optimizer = torch.optim.Adam(list(meta.values()), lr=OUTER_LR)
    gen = torch.Generator().manual_seed(seed)  # the same seed gives both runs the same tasks
    losses: list[float] = []
    running = math.nan
    bar = tqdm(range(iterations), desc=name, unit="it", dynamic_ncols=True, mininterval=0.5)
    for it in bar:
        tasks = sample_tasks(meta_batch, K_SHOT, K_SHOT, gen)
        if steps > 0:  # one vectorised call over the meta-batch: mean value and hypergradient
            res = hypergrad(MAML, solver, meta, Batch(tasks), strategy=Unrolled())
        else:
            # Without adaptation the mean of the tasks' query MSEs is the MSE of their pooled
            # query points (every task has as many), so one un-batched call gives the same value
            # and gradient as Batch(tasks), without the per-task bookkeeping (several times faster).
            res = hypergrad(MAML, solver, meta, pooled(tasks), strategy=Unrolled())
        for key, tensor in meta.items():
            tensor.grad = res.grad[key]
        optimizer.step()
        loss = float(res.value)
        losses.append(loss)
        running = loss if math.isnan(running) else 0.98 * running + 0.02 * loss
        if it % 10 == 0 or it == iterations - 1:
            bar.set_postfix(loss=f"{running:.3f}", refresh=False)
    bar.close()
    return losses


# --------------------------------------------------------------------------- evaluation
def adapt(meta: Params, tasks: Task, steps: int) -> Params:
    """Adapted parameters for every task (leading task axis) after ``steps`` steps of α.

    One vectorised ``bilevel.solve`` call (no hypergradient). A diverging task comes back with
    non-finite parameters, which the caller counts and excludes.
    """
    solver = solvers.GradientDescent(lr=INNER_LR, steps=steps)
    return solve(MAML, solver, meta, Batch(tasks))


def query_mse_per_task(params: Params, tasks: Task) -> torch.Tensor:
    """Query MSE of each task under its own (batched) parameters."""
    per_task = torch.func.vmap(lambda p, x, y: mse(net(p, x), y))
    with torch.no_grad():
        return per_task(params, tasks["x_q"], tasks["y_q"])


def summarise(values: torch.Tensor) -> dict[str, float]:
    """Mean and 95% half-width over the finite values; how many were not finite."""
    finite = values[torch.isfinite(values)]
    n = int(finite.numel())
    mean = float(finite.mean()) if n else math.nan
    half = 1.96 * float(finite.std()) / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "ci": half, "n": n, "nonfinite": int(values.numel()) - n}


def evaluate(meta: Params, tasks: Task) -> tuple[dict[int, dict[str, float]], dict[int, Params]]:
    stats: dict[int, dict[str, float]] = {}
    adapted: dict[int, Params] = {}
    for steps in EVAL_STEPS:
        params = adapt(meta, tasks, steps)
        stats[steps] = summarise(query_mse_per_task(params, tasks))
        adapted[steps] = params
    return stats, adapted


# --------------------------------------------------------------------------- reporting
def results_table(
    maml: dict[int, dict[str, float]],
    base: dict[int, dict[str, float]],
    iterations: int,
    n_eval: int,
) -> str:
    def cell(s: dict[str, float]) -> str:
        return "n/a" if math.isnan(s["mean"]) else f"{s['mean']:.2f} ± {s['ci']:.2f}"

    rows: list[list[str]] = [
        ["", *(f"{k} step{'s' if k != 1 else ''}" for k in EVAL_STEPS), "non-finite"],
        [
            f"MAML, this run ({iterations} it.)",
            *(cell(maml[k]) for k in EVAL_STEPS),
            "/".join(str(int(maml[k]["nonfinite"])) for k in EVAL_STEPS),
        ],
        [
            f"pretrained, this run ({iterations} it.)",
            *(cell(base[k]) for k in EVAL_STEPS),
            "/".join(str(int(base[k]["nonfinite"])) for k in EVAL_STEPS),
        ],
    ]
    rows += [[label, *(ref.get(k, "–") for k in EVAL_STEPS), ""] for label, ref in REFERENCE_ROWS]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]

    def fmt(r: list[str]) -> str:
        first = r[0].ljust(widths[0])
        return "  ".join([first, *(v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True))])

    rule = "-" * len(fmt(rows[0]))
    lines = [fmt(rows[0]), rule, fmt(rows[1]), fmt(rows[2]), rule, *map(fmt, rows[3:])]
    lines = [line.rstrip() for line in lines]
    lines.append(
        f"MSE on {EVAL_QUERY} query points after k steps of α = {INNER_LR} on K = {K_SHOT} "
        f"support points,\nmean ± 1.96·std/√n over {n_eval} new tasks; non-finite: tasks whose "
        "MSE was not finite at 0/1/5/10 steps\n(counted and excluded from the mean). "
        "References from REFERENCES.md (paper: K = 5, no intervals given)."
    )
    return "\n".join(lines)


def smooth(values: list[float], window: int) -> tuple[list[int], list[float]]:
    if len(values) < window or window <= 1:
        return list(range(1, len(values) + 1)), values
    t = torch.tensor(values)
    kernel = torch.ones(1, 1, window) / window
    out = torch.nn.functional.conv1d(t.view(1, 1, -1), kernel).view(-1)
    return list(range(window, len(values) + 1)), out.tolist()


def plot(
    path: Path,
    tasks: Task,
    adapted_maml: dict[int, Params],
    adapted_base: dict[int, Params],
    maml_losses: list[float],
    base_losses: list[float],
    meta_batch: int,
) -> None:
    """Three new tasks with their fits (top) and the training losses (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = plt.figure(figsize=(14, 9), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(1.2, 1.0))
    x = torch.linspace(*X_RANGE, 300).view(-1, 1)
    xs = x.view(-1).tolist()
    axes = top.subplots(1, 3)
    for i, ax in enumerate(axes):
        amp, phase = float(tasks["amp"][i]), float(tasks["phase"][i])

        def curve(params: Params, i: int = i) -> list[float]:
            with torch.no_grad():
                return net({k: v[i] for k, v in params.items()}, x).view(-1).tolist()

        truth = (amp * torch.sin(x - phase)).view(-1).tolist()
        ax.plot(xs, truth, color="black", lw=2.4, label="true function")
        ax.plot(
            xs,
            curve(adapted_maml[0]),
            color="tab:blue",
            ls=":",
            lw=1.8,
            label="MAML, before adaptation",
        )
        ax.plot(xs, curve(adapted_maml[1]), color="tab:blue", ls="--", lw=1.8, label="MAML, 1 step")
        ax.plot(xs, curve(adapted_maml[10]), color="tab:blue", lw=2.0, label="MAML, 10 steps")
        ax.plot(
            xs, curve(adapted_base[10]), color="tab:orange", lw=1.8, label="pretrained, 10 steps"
        )
        ax.scatter(
            tasks["x_s"][i].view(-1).tolist(),
            tasks["y_s"][i].view(-1).tolist(),
            marker="^",
            s=60,
            color="tab:red",
            zorder=5,
            label=f"K = {K_SHOT} support points",
        )
        ax.set_title(f"new task {i + 1}: A = {amp:.2f}, φ = {phase:.2f}")
        ax.set_xlabel("x")
        ax.set_xlim(*X_RANGE)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("y")
    handles, labels = axes[0].get_legend_handles_labels()
    top.legend(handles, labels, loc="outside lower center", ncol=6, frameon=False)

    ax = bottom.subplots()
    iterations = len(maml_losses)
    window = max(1, min(100, iterations // 20))
    for losses, label, color in (
        (maml_losses, "MAML: query MSE after 1 step (the meta-training loss)", "tab:blue"),
        (base_losses, "pretrained: query MSE without adaptation (its training loss)", "tab:orange"),
    ):
        ax.plot(range(1, len(losses) + 1), losses, color=color, alpha=0.2, lw=0.8)
        ax.plot(
            *smooth(losses, window), color=color, lw=2, label=f"{label}; line: mean of {window}"
        )
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"meta-iteration ({meta_batch} tasks each)")
    ax.set_ylabel("MSE (log scale)")
    ax.set_xlim(1, max(iterations, 2))
    ax.set_title(f"training loss over {iterations} iterations (the paper trains 70,000)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left")
    fig.suptitle("MAML on sinusoid regression — a short demo run", fontsize=14, fontweight="bold")
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="MAML on sinusoid regression with bilevel (a short CPU demo run).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--iterations", type=int, default=5000, help="meta-iterations (the paper uses 70000)"
    )
    parser.add_argument("--meta-batch", type=int, default=25, help="tasks per meta-batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init and training tasks")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder")
    parser.add_argument("--eval-tasks", type=int, default=600, help="new tasks to evaluate on")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (the tensors are tiny, so 1 is usually fastest)",
    )
    args = parser.parse_args(argv)
    for name in ("iterations", "meta_batch", "eval_tasks", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.eval_tasks < 3:
        parser.error("--eval-tasks must be at least 3 (three tasks are plotted)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"MAML sinusoid demo: {args.iterations} meta-iterations x {args.meta_batch} tasks, "
        f"K = {K_SHOT}, inner 1 step α = {INNER_LR}, Adam {OUTER_LR}, seed {args.seed}.\n"
        "A short run, not the paper's 70,000-iteration reproduction."
    )

    init = init_params(torch.Generator().manual_seed(args.seed))
    maml = {k: v.clone() for k, v in init.items()}
    base = {k: v.clone() for k, v in init.items()}  # same init, same tasks, same budget

    t0 = time.perf_counter()
    maml_losses = train("MAML meta-training ", 1, maml, args.iterations, args.meta_batch, args.seed)
    t_maml = time.perf_counter() - t0
    t0 = time.perf_counter()
    base_losses = train("pretrained baseline", 0, base, args.iterations, args.meta_batch, args.seed)
    t_base = time.perf_counter() - t0

    t0 = time.perf_counter()
    eval_tasks = sample_tasks(
        args.eval_tasks, K_SHOT, EVAL_QUERY, torch.Generator().manual_seed(EVAL_SEED)
    )
    maml_stats, maml_adapted = evaluate(maml, eval_tasks)
    base_stats, base_adapted = evaluate(base, eval_tasks)
    t_eval = time.perf_counter() - t0

    print()
    print(results_table(maml_stats, base_stats, args.iterations, args.eval_tasks))
    clear = all(
        maml_stats[k]["mean"] + maml_stats[k]["ci"] < base_stats[k]["mean"] - base_stats[k]["ci"]
        for k in (1, 10)
    )
    verdict = (
        "beats the pretrained baseline after 1 and 10 steps (the 95% intervals do not overlap)"
        if clear
        else "does NOT clearly beat the pretrained baseline (the 95% intervals overlap or cross)"
    )
    print(
        f"\nThis run: MAML {verdict}. It is a {args.iterations}-iteration run; the references "
        "trained for 70,000, so their MAML numbers are lower."
    )

    path = args.out / "maml_sinusoid_demo.png"
    plot(path, eval_tasks, maml_adapted, base_adapted, maml_losses, base_losses, args.meta_batch)
    wall = time.perf_counter() - start
    print(f"plot saved to {path}")
    print(
        f"wall time {wall:.1f} s (MAML {t_maml:.1f} s, baseline {t_base:.1f} s, "
        f"evaluation {t_eval:.1f} s)"
    )
    return {"maml": maml_stats, "baseline": base_stats, "wall_s": wall}


if __name__ == "__main__":
    main()
