"""Meta-gradient returns (Xu, van Hasselt & Silver 2018): the paper's illustrative toy.

A 10-step episode visits the states 0, 1, …, 9 in turn (one-hot features) and then ends. The
reward of step t (``rewards[t] = R_{t+1}``, t = 0 … 9) is noise ~ N(0, 1) when t is even and a
fixed signal 0.1 when t is odd. Every transition has its own discount ``γ_t = sigmoid(η_t)``, and
the return used to train the value function is ``G_t = R_{t+1} + γ_t G_{t+1}`` (``G_10 = 0``), so
``γ_t`` is the discount that *leads into* the reward ``rewards[t + 1]``: into a signal reward for
even t, into a noise reward for odd t; ``γ_9`` leads into the end of the episode and gets no
gradient (it stays at its start, 0.5).

In ``bilevel`` terms meta-gradient returns is a *configuration*, not a class::

    meta      = {"eta": zeros(10)}                  # γ = sigmoid(η), one per transition
    init      = lambda meta, task: zeros(10)        # value weights w, reset every outer step
    inner     = Σ_t (G^γ_t − w·onehot(S_t))²        # G^γ from bilevel.rl.discounted_returns
    solver    = solvers.GradientDescent(lr=0.5, steps=1)
    outer     = Σ_t (G'_t − w'·onehot(S_t))²        # G' undiscounted (γ' = 1), a fresh episode
    strategy  = Unrolled()                          # or ForwardMode(): the same hypergradient
    outer optimiser: SGD on η, lr 0.5, 10,000 steps

With one-hot features, one step of lr 0.5 on ``Σ_t (G_t − v(S_t))²`` from ``w = 0`` sets
``v(S_t) = G^γ_t`` exactly, so the meta-gradient asks: which discounts make the γ-return of one
episode the best predictor of the undiscounted return of the next? Discounting a noise reward away
removes its variance; discounting a signal reward away biases the prediction. The target
(docs/references.md): every γ leading into a noise reward ends below 0.05, every γ leading into a
signal reward above 0.85.

Measured (seed 0, 10,000 steps): γ into noise 0.003–0.007, into signal 0.932–0.998 (all targets
met); the held-out outer loss is 30.4 against 49.7 for undiscounted returns. About 5 ms of CPU time
per outer step (≈ 55 s in all; 103 s of wall time on a 2-core machine shared with other jobs). The
last signal discount γ_8 (one signal reward left after it) converges slowest and wanders with the
SGD noise (0.80–0.95 over the second half of this run), so the final values vary with the seed.

Run::

    python examples/metagradient_returns.py            # 10,000 outer steps
    python examples/metagradient_returns.py --quick    # 500 steps, a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bilevel import Batch, ForwardMode, Problem, Unrolled, hypergrad, solve, solvers
from bilevel.rl import discounted_returns

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _report.py, _setup.py
from _report import md_table, write_section
from _setup import add_threads_option, set_threads

T = 10  # steps per episode
SIGNAL = 0.1  # the reward at odd steps
INNER_LR = 0.5
OUTER_LR = 0.5
NOISE_BELOW = 0.05  # target for every γ leading into a noise reward
SIGNAL_ABOVE = 0.85  # target for every γ leading into a signal reward
DTYPE = torch.float64
EVAL_PAIRS = 20_000  # held-out pairs of episodes for the final comparison
EVAL_SEED = 2018
ONEHOT = torch.eye(T, dtype=DTYPE)  # row t: the features of state S_t


def leads_into(t: int) -> str:
    """What ``γ_t`` discounts first: the reward ``rewards[t + 1]``, or nothing for the last one."""
    if t == T - 1:
        return "end"
    return "noise" if (t + 1) % 2 == 0 else "signal"


REWARD_NAMES = {"noise": "noise  (N(0, 1))", "signal": "signal (0.1)", "end": "end of episode"}
NOISE = [t for t in range(T) if leads_into(t) == "noise"]
SIGNAL_LEADING = [t for t in range(T) if leads_into(t) == "signal"]


def episodes(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` episodes of rewards, shape ``(n, T)``: N(0, 1) at even steps, 0.1 at odd ones."""
    rewards = torch.full((n, T), SIGNAL, dtype=DTYPE)
    rewards[:, 0::2] = torch.randn(n, (T + 1) // 2, generator=gen, dtype=DTYPE)
    return rewards


def value(w: torch.Tensor) -> torch.Tensor:
    """``v(S_t) = w · onehot(S_t)`` for the states S_0 … S_9 of the episode."""
    return ONEHOT @ w


def inner_loss(w: torch.Tensor, meta: dict[str, torch.Tensor], task: dict[str, Any]) -> Any:
    """Squared error of the value to the γ-discounted return of the training episode."""
    gamma = torch.sigmoid(meta["eta"])
    return ((discounted_returns(task["rewards"], gamma) - value(w)) ** 2).sum()


def outer_loss(w: torch.Tensor, meta: dict[str, torch.Tensor], task: dict[str, Any]) -> Any:
    """Squared error of the updated value to the undiscounted return of a fresh episode."""
    return ((discounted_returns(task["fresh"], 1.0) - value(w)) ** 2).sum()


PROBLEM = Problem(
    init=lambda meta, task: torch.zeros(T, dtype=DTYPE),  # value weights reset every outer step
    inner_loss=inner_loss,
    outer_loss=outer_loss,
)
SOLVER = solvers.GradientDescent(lr=INNER_LR, steps=1)


def train(steps: int, seed: int, progress: bool) -> tuple[torch.Tensor, float]:
    """SGD on η; returns the γ's after every outer step ``(steps + 1, T)`` and the largest
    |Unrolled − ForwardMode| hypergradient difference on the checked steps."""
    gen = torch.Generator().manual_seed(seed)
    train_eps, fresh_eps = episodes(steps, gen), episodes(steps, gen)
    meta = {"eta": torch.zeros(T, dtype=DTYPE)}
    history = [torch.sigmoid(meta["eta"])]
    checks = {0, steps // 2, steps - 1}
    worst_diff = 0.0
    for k in tqdm(range(steps), desc="outer steps", disable=not progress, mininterval=0.5):
        task = {"rewards": train_eps[k], "fresh": fresh_eps[k]}
        res = hypergrad(PROBLEM, SOLVER, meta, task, strategy=Unrolled())
        if k in checks:  # forward mode (one JVP per η_t) must give the same hypergradient
            fwd = hypergrad(PROBLEM, SOLVER, meta, task, strategy=ForwardMode())
            worst_diff = max(worst_diff, float((fwd.grad["eta"] - res.grad["eta"]).abs().max()))
        meta = {"eta": meta["eta"] - OUTER_LR * res.grad["eta"]}
        history.append(torch.sigmoid(meta["eta"]))
    return torch.stack(history), worst_diff


def held_out_loss(gamma: torch.Tensor, n: int, seed: int) -> float:
    """The mean outer loss over ``n`` new pairs of episodes with the discounts ``gamma`` fixed:
    one vectorised ``bilevel.solve`` (the inner step) and the outer loss of every pair."""
    gen = torch.Generator().manual_seed(seed)
    tasks = {"rewards": episodes(n, gen), "fresh": episodes(n, gen)}
    meta = {"eta": torch.logit(gamma.clamp(1e-12, 1 - 1e-12))}
    w = solve(PROBLEM, SOLVER, meta, Batch(tasks))
    per_pair = torch.func.vmap(lambda w, task: outer_loss(w, meta, task))(w, tasks)
    return float(per_pair.mean())


def report(gammas: torch.Tensor, steps: int) -> tuple[str, bool]:
    """A table of the learned γ's beside their targets, and whether every target is met."""
    final = gammas[-1]
    tail = gammas[-max(1, steps // 10) :].mean(0)
    lines = [
        f"{'γ_t':<5} {'leads into':<28} {'final':>7} {'mean, last 10%':>15}  {'target':<8} result",
    ]
    ok = True
    for t in range(T):
        kind = leads_into(t)
        what = REWARD_NAMES[kind]
        where = f"{what}, rewards[{t + 1}]" if kind != "end" else what
        if kind == "noise":
            target, passed = f"< {NOISE_BELOW}", bool(final[t] < NOISE_BELOW)
        elif kind == "signal":
            target, passed = f"> {SIGNAL_ABOVE}", bool(final[t] > SIGNAL_ABOVE)
        else:
            target, passed = "(none)", True
        ok &= passed
        verdict = "" if kind == "end" else ("PASS" if passed else "FAIL")
        lines.append(
            f"γ_{t:<3} {where:<28} {float(final[t]):7.4f} {float(tail[t]):15.4f}  "
            f"{target:<8} {verdict}".rstrip()
        )
    noise, signal = final[NOISE], final[SIGNAL_LEADING]
    lines.append(
        f"into noise: max {float(noise.max()):.4f} (mean {float(noise.mean()):.4f}); into signal: "
        f"min {float(signal.min()):.4f} (mean {float(signal.mean()):.4f}).\nReference "
        "(docs/references.md): an independent re-implementation reaches ≈ 0.01 and ≈ 0.91–0.94."
    )
    return "\n".join(lines), ok


def section_body(
    gammas: torch.Tensor,
    losses: dict[str, float],
    ok: bool,
    diff: float,
    elapsed: float,
    steps: int,
) -> str:
    """The ``docs/results`` section: the learned γ's beside their targets, the held-out loss."""
    final = gammas[-1]
    tail = gammas[-max(1, steps // 10) :].mean(0)
    rows = []
    for t in range(T):
        kind = leads_into(t)
        target = {"noise": f"< {NOISE_BELOW}", "signal": f"> {SIGNAL_ABOVE}"}.get(kind, "(none)")
        if kind == "noise":
            verdict = "PASS" if final[t] < NOISE_BELOW else "FAIL"
        elif kind == "signal":
            verdict = "PASS" if final[t] > SIGNAL_ABOVE else "FAIL"
        else:
            verdict = ""
        value, mean = f"{float(final[t]):.4f}", f"{float(tail[t]):.4f}"
        rows.append([f"γ_{t}", REWARD_NAMES[kind], value, mean, target, verdict])
    noise, signal = final[NOISE], final[SIGNAL_LEADING]
    parts = [
        f"{T}-step episodes, {steps} outer steps of SGD (lr {OUTER_LR}) on η, inner one SGD step "
        f"(lr {INNER_LR}) from w = 0. Target (docs/references.md): every γ leading into a noise "
        f"reward < {NOISE_BELOW}, every γ leading into a signal reward > {SIGNAL_ABOVE}; an "
        "independent re-implementation reaches ≈ 0.01 and ≈ 0.91–0.94.",
        "",
        md_table(["γ_t", "leads into", "final", "mean, last 10%", "target", "result"], rows),
        "",
        f"**{'PASS' if ok else 'FAIL'}**: into noise max {float(noise.max()):.4f}, into signal "
        f"min {float(signal.min()):.4f}."
        + ("" if steps >= 10_000 else " (A short run: the targets are stated for 10,000 steps.)"),
        "",
        f"Meta-objective on {EVAL_PAIRS} new pairs of episodes (mean Σ_t (G'_t − v'(S_t))²):",
        "",
        md_table(["discounts", "held-out loss"], [[k, f"{v:.3f}"] for k, v in losses.items()]),
        "",
        f"ForwardMode() against Unrolled(): max |difference| {diff:.1e} on 3 steps. Training "
        f"{elapsed:.1f} s ({1e3 * elapsed / steps:.2f} ms per outer step).",
    ]
    return "\n".join(parts)


def plot(path: Path, gammas: torch.Tensor) -> None:
    """γ trajectories over outer steps (noise- vs signal-leading colours) and the final γ's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(13, 5), layout="constrained", gridspec_kw={"width_ratios": (2, 1)}
    )
    steps = list(range(gammas.shape[0]))
    colours = {"noise": "tab:red", "signal": "tab:blue", "end": "tab:gray"}
    labels = {
        "noise": "γ leading into a noise reward",
        "signal": "γ leading into a signal reward",
        "end": "γ_9 (leads into the end: no gradient)",
    }
    seen: set[str] = set()
    for t in range(T):
        kind = leads_into(t)
        ax.plot(
            steps,
            gammas[:, t].tolist(),
            color=colours[kind],
            lw=1.3,
            ls="--" if kind == "end" else "-",
            label=None if kind in seen else labels[kind],
        )
        seen.add(kind)
    ax.axhline(SIGNAL_ABOVE, color="tab:blue", ls=":", lw=1, label=f"target > {SIGNAL_ABOVE}")
    ax.axhline(NOISE_BELOW, color="tab:red", ls=":", lw=1, label=f"target < {NOISE_BELOW}")
    ax.set_xlabel("outer step")
    ax.set_ylabel("γ_t = sigmoid(η_t)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("meta-learned discount of every transition")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")

    final = gammas[-1].tolist()
    bx.bar(range(T), final, color=[colours[leads_into(t)] for t in range(T)])
    for t, g in enumerate(final):
        bx.text(t, g + 0.01, f"{g:.3f}", ha="center", va="bottom", fontsize=8)
    bx.axhline(SIGNAL_ABOVE, color="tab:blue", ls=":", lw=1)
    bx.axhline(NOISE_BELOW, color="tab:red", ls=":", lw=1)
    bx.set_xticks(range(T), [f"γ_{t}\n{leads_into(t)}" for t in range(T)], fontsize=8)
    bx.set_ylim(0, 1.08)
    bx.set_title(f"final γ after {gammas.shape[0] - 1} outer steps")
    bx.grid(alpha=0.3, axis="y")
    fig.suptitle("Meta-gradient returns (Xu et al. 2018): the 10-step noise/signal toy")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Meta-gradient returns: learn one discount per transition (Xu et al. 2018).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=10_000, help="outer steps (the paper's toy)")
    parser.add_argument("--quick", action="store_true", help="a 500-step smoke run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episodes")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the plot")
    add_threads_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 500
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"Meta-gradient returns toy: {T}-step episodes, {args.steps} outer steps, inner 1 SGD step "
        f"(lr {INNER_LR}), outer SGD (lr {OUTER_LR}) on η, seed {args.seed}."
    )
    start = time.perf_counter()
    gammas, diff = train(args.steps, args.seed, not args.no_progress)
    elapsed = time.perf_counter() - start
    table, ok = report(gammas, args.steps)
    print(table)
    held_out = {
        "learned γ": gammas[-1],
        "γ = 0.5 (the start)": gammas[0],
        "γ = 1 (undiscounted)": torch.ones(T, dtype=DTYPE),
        "γ = 0 (immediate reward)": torch.zeros(T, dtype=DTYPE),
    }
    losses = {k: held_out_loss(g, EVAL_PAIRS, EVAL_SEED) for k, g in held_out.items()}
    print(f"meta-objective on {EVAL_PAIRS} new pairs of episodes (mean Σ_t (G'_t − v'(S_t))²):")
    print("\n".join(f"  {k:<26} {v:8.3f}" for k, v in losses.items()))
    print(f"ForwardMode() vs Unrolled() hypergradient: max |difference| {diff:.1e} on 3 steps")
    path = args.out / "metagradient_returns.png"
    plot(path, gammas)
    if args.steps < 10_000:
        print("(a short run: the targets are stated for 10,000 outer steps)")
    print(
        f"targets: {'PASS' if ok else 'FAIL'}; training wall time {elapsed:.1f} s "
        f"({1e3 * elapsed / args.steps:.2f} ms per outer step); plot: {path}"
    )
    section = write_section(
        args.out,
        "metagradient_returns",
        "Meta-gradient returns: one discount per transition (Xu et al. 2018)",
        section_body(gammas, losses, ok, diff, elapsed, args.steps),
        seconds=time.perf_counter() - start,
        argv=argv,
        images=[path],
    )
    final = gammas[-1]
    return {
        "section": section,
        "gammas": gammas,
        "final": final,
        "noise": final[NOISE],
        "signal": final[SIGNAL_LEADING],
        "passed": ok,
        "held_out": losses,
        "forward_mode_difference": diff,
        "seconds": elapsed,
        "plot": path,
    }


if __name__ == "__main__":
    main()
