"""Few-shot classification on sklearn's digits: MAML, first-order MAML and iMAML side by side.

The Omniglot stand-in described in docs/references.md (iMAML section). ``load_digits`` holds
1,797 grey 8×8 images of the digits 0–9; every digit rotated by 0°, 90°, 180° and 270° is its own
class (the augmentation of Omniglot's few-shot benchmark), 40 classes in all. The classes are
split by digit, as Omniglot splits by character before rotating: **meta-test = the digits 3, 4 and 7
(12 classes; 543 images, each in 4 rotations), meta-train = the other seven digits (28 classes;
1,254 images in 4 rotations)**, so no test image, in any rotation, is seen in meta-training.
3, 4 and 7 are the digits none of whose rotations looks like another class: 0, 1 and 8 are nearly
symmetric under 180°, and 6 and 9 are each other's 180° rotations. A task is 5-way K-shot
(K = 1 or 5): 5 classes drawn at random, labelled 0–4 in random order, K support and 15 query
images each.

In ``bilevel`` terms every algorithm is a configuration (``bilevel.recipes``) of one model::

    meta θ     the weights of a small conv net, predict(params, x) (a pure function):
               conv 3×3/2 (1→32) · norm · SiLU · conv 3×3/2 (32→32) · norm · SiLU · linear → 5
    task       recipes.FewShot(x_support, y_support, x_query, y_query)
    MAML       recipes.maml(predict, cross_entropy, lr=0.4, steps=5): Unrolled() through 5 steps
    FOMAML     recipes.fomaml(...): the same inner loop, FirstOrder()
    iMAML      recipes.imaml(..., lam=2, cg_steps=5): argmin L_support(φ) + λ/2‖φ − θ‖² by
               50 heavy-ball steps (lr 0.03, momentum 0.7), Implicit(CG(maxiter=5))
    outer      bilevel.trainer.fit, solvers.Adam (lr 1e-3; iMAML 2e-4), a Batch of 8 tasks per
               step (vmapped), 300 steps; the same initial θ and task stream for all methods
    meta-test  bilevel.solve on a Batch of 600 new test tasks (adapt θ on the support set with
               the method's own inner solver), accuracy on the query set, ± 1.96·std/√600

``norm`` divides each image's feature map by its root-mean-square (a per-example layer norm
without affine parameters, where MAML's conv net uses batch norm). Three choices serve iMAML,
whose meta-gradient is exact only at a stationary φ* (``hypergrad`` warns otherwise; this example
counts the warnings and prints them):

- SiLU, not ReLU: with ReLU the inner loss is not differentiable everywhere and gradient descent
  stalls near a kink, ‖∇‖ ≈ 0.4 however many steps it takes (``--activation relu`` shows it);
  there is no stationary point for the implicit function theorem.
- the norms: without them the meta-learned θ gets ever sharper (the top Hessian eigenvalue of the
  support loss at θ grew 2.5 → 14 → 39 → 74 → 125 → 498 over 125 meta-steps, measured with this
  net minus the norms): iMAML's meta-gradient sees only φ*, not the path from θ to φ*, so
  nothing stops it. Once the curvature at θ left the heavy-ball iteration's stable range
  (then lr 0.04, momentum 0.6: (1 + √0.6)²/0.04 ≈ 79) the inner loop diverged (‖∇‖ ≈ 10–50) and
  meta-training collapsed to 35% accuracy. The norms slow the sharpening; they do not stop it
  (the head is not scale-invariant).
- a smaller outer learning rate for iMAML, 2e-4 against MAML's 1e-3 (``--imaml-outer-lr``): at
  1e-3 the 5-shot θ's top eigenvalue went 11 → 38 → 65 → 99 → 135 over the first 80 steps, past
  the stable range of this example's heavy-ball loop ((1 + √0.7)²/0.03 ≈ 112); from step ≈ 60 on
  the inner solves no longer converged (worst task ‖∇‖ > 1, negative curvature in CG), and
  5-shot iMAML, at 92% on the curve tasks at step 50, ended at 83.0 ± 0.9% (1-shot: 80.3 ± 0.7%).

Run::

    python examples/fewshot_digits.py            # 1- and 5-shot, all three methods
    python examples/fewshot_digits.py --quick    # a smoke run, under a minute

It prints the tables beside the reference in docs/references.md, saves ``fewshot_digits.png``
(training curves) and writes the docs section ``fewshot_digits.md`` under ``--out``.

Measured (seed 0, the full run: 844 s wall, 793 s CPU on one thread of a shared 2-core machine;
600 test tasks, accuracy % ± 1.96·std/√n)::

                     1-shot       5-shot       training time (wall, 1-shot + 5-shot)
    MAML             83.9 ± 0.7   92.0 ± 0.4    37 s +  58 s
    first-order MAML 82.3 ± 0.7   91.7 ± 0.5    17 s +  26 s
    iMAML (λ = 2)    79.6 ± 0.7   92.0 ± 0.3   218 s + 310 s
    adapting θ₀      74.3 / 71.3  83.3 / 88.0  (no meta-training: (FO)MAML's / iMAML's solver)
    1-NN, pixels     86.8 ± 0.6   97.0 ± 0.2   (no learning at all)

All far above the 20% chance level (the only target in docs/references.md; no published number
exists for this stand-in). Meta-training gains 4–10 points over adapting θ₀, but 1-nearest-neighbour
in pixel space beats every meta-learner: seven training digits are too few for the learned
initialisation to transfer to new digits better than pixel distance. iMAML warned on every step (5
CG steps leave a relative residual of 0.16–0.29; the median inner ‖∇‖ is ~1e-3, above the 1e-4
tolerance) and is the slowest (50 inner steps per task and meta-step against MAML's 5). By the end
of its 5-shot run the top eigenvalue at θ (108) is at the heavy-ball loop's limit (110) and a few
tasks per meta-batch diverge (worst ‖∇‖ up to 8; at the meta-test the median is 9e-4, the worst
9.9): a longer run would need a still smaller learning rate or a more careful inner solver.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from bilevel import Batch, BilevelWarning, recipes, solve, solvers
from bilevel.recipes import Config, FewShot
from bilevel.trainer import History, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _report.py, _setup.py
from _report import md_table, write_section
from _setup import add_threads_option, set_threads

TEST_DIGITS = (3, 4, 7)
ROTATIONS = (0, 90, 180, 270)
METHODS = ("maml", "fomaml", "imaml")
LABELS = {"maml": "MAML", "fomaml": "first-order MAML", "imaml": "iMAML (λ = 2)"}
COLORS = {"maml": "C0", "fomaml": "C1", "imaml": "C2"}
STATIONARITY_TOL = 1e-4  # Implicit's default: ‖∇_φ inner‖ above it warns
QUICK = {"meta_steps": 30, "test_tasks": 100, "curve_tasks": 50, "every": 10, "shots": [1]}
Params = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Pool:
    """The images of some classes: ``images[c, :counts[c]]`` are class ``c``'s, 8×8 in [0, 1]."""

    images: torch.Tensor  # (classes, most images in a class, 8, 8), zero-padded
    counts: torch.Tensor  # (classes,)
    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return int(self.counts.sum())


def load_pools() -> tuple[Pool, Pool]:
    """(meta-train, meta-test): each digit in four rotations; the test digits are TEST_DIGITS."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target)

    def pool(which: list[int]) -> Pool:
        classes, names = [], []
        for d in which:
            for k, angle in enumerate(ROTATIONS):
                classes.append(torch.rot90(images[labels == d], k, dims=(1, 2)))
                names.append(f"{d}@{angle}°")
        most = max(len(c) for c in classes)
        padded = torch.zeros(len(classes), most, 8, 8)
        for i, c in enumerate(classes):
            padded[i, : len(c)] = c
        return Pool(padded, torch.tensor([len(c) for c in classes]), tuple(names))

    train = [d for d in range(10) if d not in TEST_DIGITS]
    return pool(train), pool(list(TEST_DIGITS))


def sample_tasks(
    pool: Pool, n: int, ways: int, shots: int, query: int, gen: torch.Generator
) -> FewShot:
    """``n`` tasks with a leading task axis: ``ways`` random classes (labels 0…ways−1 in random
    order), ``shots`` support and ``query`` query images per class, drawn without replacement."""
    n_classes, most = pool.images.shape[:2]
    classes = torch.rand(n, n_classes, generator=gen).argsort(1)[:, :ways]  # (n, ways)
    scores = torch.rand(n, ways, most, generator=gen)
    valid = torch.arange(most) < pool.counts[classes].unsqueeze(-1)
    picks = torch.where(valid, scores, 2.0).argsort(-1)[..., : shots + query]
    x = pool.images[classes.unsqueeze(-1), picks]  # (n, ways, shots + query, 8, 8)
    y = torch.arange(ways).view(1, ways, 1).expand(n, ways, shots + query)

    def flat(a: torch.Tensor) -> torch.Tensor:
        return a.reshape(n, -1, *a.shape[3:])

    return FewShot(
        flat(x[:, :, :shots]), flat(y[:, :, :shots]), flat(x[:, :, shots:]), flat(y[:, :, shots:])
    )


# ---------------------------------------------------------------------------------------- model
def init_params(gen: torch.Generator, channels: int, ways: int) -> Params:
    """He-initialised conv weights, zero biases, a small linear head."""
    c = channels
    return {
        "conv1": torch.randn(c, 1, 3, 3, generator=gen) * math.sqrt(2 / 9),
        "bias1": torch.zeros(c),
        "conv2": torch.randn(c, c, 3, 3, generator=gen) * math.sqrt(2 / (9 * c)),
        "bias2": torch.zeros(c),
        "head": torch.randn(4 * c, ways, generator=gen) * math.sqrt(1 / (4 * c)),
        "bias": torch.zeros(ways),
    }


def make_predict(activation: str) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """``predict(params, x)``: images (n, 8, 8) -> logits (n, ways); a pure function."""
    act = {"silu": F.silu, "relu": F.relu}[activation]

    def norm(z: torch.Tensor) -> torch.Tensor:  # per image, over channels and pixels
        return z * torch.rsqrt(z.pow(2).mean(dim=(1, 2, 3), keepdim=True) + 1e-6)

    def predict(params: Params, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1)
        h = act(norm(F.conv2d(h, params["conv1"], params["bias1"], stride=2, padding=1)))  # 4×4
        h = act(norm(F.conv2d(h, params["conv2"], params["bias2"], stride=2, padding=1)))  # 2×2
        return h.flatten(1) @ params["head"] + params["bias"]

    return predict


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def configs(predict: Callable[..., Any], args: argparse.Namespace) -> dict[str, Config]:
    """The three algorithms as recipes; iMAML's inner solver gets heavy-ball momentum."""
    imaml = recipes.imaml(
        predict,
        cross_entropy,
        lam=args.lam,
        lr=args.imaml_lr,
        steps=args.imaml_steps,
        cg_steps=args.cg_steps,
    )
    heavy_ball = solvers.GradientDescent(args.imaml_lr, args.imaml_steps, args.imaml_momentum)
    return {
        "maml": recipes.maml(predict, cross_entropy, lr=args.inner_lr, steps=args.inner_steps),
        "fomaml": recipes.fomaml(predict, cross_entropy, lr=args.inner_lr, steps=args.inner_steps),
        "imaml": dataclasses.replace(imaml, solver=heavy_ball),
    }


# ----------------------------------------------------------------------------------- evaluation
def accuracies(
    cfg: Config, predict: Callable[..., Any], meta: Params, tasks: FewShot
) -> tuple[torch.Tensor, Params]:
    """Per-task query accuracy after adapting ``meta`` with the config's inner solver, and the
    adapted parameters (one vectorised ``bilevel.solve`` over the Batch)."""
    phi = solve(cfg.problem, cfg.solver, meta, Batch(tasks))

    def one(p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (predict(p, x).argmax(-1) == y).float().mean()

    return torch.func.vmap(one)(phi, tasks.x_query, tasks.y_query), phi


def stationarity(cfg: Config, meta: Params, phi: Params, tasks: FewShot) -> torch.Tensor:
    """‖∇_φ inner(φ, θ)‖ per task at the adapted parameters (what Implicit relies on)."""

    def one(p: Params, task: FewShot) -> torch.Tensor:
        assert cfg.problem.inner_loss is not None
        g = torch.func.grad(cfg.problem.inner_loss)(p, meta, task)
        return torch.sqrt(sum((v**2).sum() for v in g.values()))

    return torch.func.vmap(one)(phi, tasks)


def nearest_neighbour(tasks: FewShot) -> torch.Tensor:
    """Per-task accuracy of 1-nearest-neighbour in pixel space (no learning at all)."""
    d = torch.cdist(tasks.x_query.flatten(2), tasks.x_support.flatten(2))
    pred = tasks.y_support.gather(1, d.argmin(-1))
    return (pred == tasks.y_query).float().mean(1)


def top_curvature(
    predict: Callable[..., Any], meta: Params, tasks: FewShot, iterations: int = 30
) -> float:
    """Mean over ``tasks`` of the largest-magnitude Hessian eigenvalue of the support loss at θ
    (power iteration on Hessian-vector products)."""
    values = []
    gen = torch.Generator().manual_seed(0)
    for i in range(tasks.x_support.shape[0]):
        x, y = tasks.x_support[i], tasks.y_support[i]
        grad = torch.func.grad(lambda p, x=x, y=y: cross_entropy(predict(p, x), y))
        v = {k: torch.randn(t.shape, generator=gen) for k, t in meta.items()}
        eig = 0.0
        for _ in range(iterations):
            hv = torch.func.jvp(grad, (meta,), (v,))[1]
            norm_v = torch.sqrt(sum((t**2).sum() for t in v.values()))
            eig = float(sum((a * b).sum() for a, b in zip(v.values(), hv.values(), strict=True)))
            eig /= float(norm_v) ** 2
            norm_hv = torch.sqrt(sum((t**2).sum() for t in hv.values()))
            v = {k: t / norm_hv for k, t in hv.items()}
        values.append(eig)
    return statistics.fmean(values)


def interval(acc: torch.Tensor) -> tuple[float, float]:
    """(mean, 1.96·std/√n) of per-task accuracies."""
    return float(acc.mean()), 1.96 * float(acc.std()) / math.sqrt(acc.numel())


# ------------------------------------------------------------------------------------- training
@dataclass
class Run:
    """One method's meta-training and meta-test at one shot count."""

    method: str
    shots: int
    meta: Params
    history: History
    seconds: float  # wall time of fit
    cpu_seconds: float  # process CPU time of fit
    accuracy: float
    ci: float
    warnings: dict[str, int]
    stationarity_steps: list[float]  # iMAML: the worst task's ‖∇‖ at each meta-step
    residual_steps: list[float]  # iMAML: the worst task's CG relative residual at each step
    negative_curvature: int  # iMAML: tasks whose CG met negative curvature, summed over steps
    test_stationarity: list[float]  # iMAML: ‖∇‖ per meta-test task
    curvature: float  # top Hessian eigenvalue of the support loss at the trained θ


def train(
    method: str,
    cfg: Config,
    predict: Callable[..., Any],
    meta0: Params,
    shots: int,
    pools: tuple[Pool, Pool],
    tests: tuple[FewShot, FewShot],
    args: argparse.Namespace,
) -> Run:
    """Meta-train with ``bilevel.trainer.fit`` and evaluate on the meta-test tasks."""
    train_pool, _ = pools
    test_tasks, curve_tasks = tests
    gen = torch.Generator().manual_seed(args.seed * 1000 + shots)  # same stream for each method

    def tasks(step: int) -> Batch:
        return Batch(sample_tasks(train_pool, args.meta_batch, args.ways, shots, args.query, gen))

    def evaluate(meta: Params) -> dict[str, float]:
        return {"test accuracy": float(accuracies(cfg, predict, meta, curve_tasks)[0].mean())}

    worst_stat: list[float] = []
    worst_res: list[float] = []
    negative = 0

    def record(step: int, meta: Params, res: Any) -> None:
        nonlocal negative
        if res.info.stationarity is not None:
            worst_stat.append(float(res.info.stationarity))
        if res.info.linear is not None:
            worst_res.append(float(res.info.linear.residual))
            negative += sum(bool(i.linear and i.linear.negative_curvature) for i in res.task_info)

    start, cpu = time.perf_counter(), time.process_time()
    # hypergrad warns on every step whose meta-gradient may be inaccurate (iMAML: 5 CG steps do
    # not reach CG's tolerance; the inner problem may not be solved to ‖∇‖ ≤ 1e-4): counted here
    # and printed, not hidden.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BilevelWarning)
        trained = fit(
            cfg,
            meta0,
            tasks,
            optimizer=solvers.Adam(outer_lr(method, args)),
            steps=args.meta_steps,
            evaluate=evaluate,
            every=args.every,
            callback=record,
            progress=args.progress,
            desc=f"{LABELS[method]}, {shots}-shot",
        )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    counts = Counter(w.category.__name__ for w in caught)
    for w in caught:  # anything that is not the library's accuracy warning goes on as usual
        if not issubclass(w.category, BilevelWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    acc, phi = accuracies(cfg, predict, trained.meta, test_tasks)
    mean, ci = interval(acc)
    test_stat = (
        stationarity(cfg, trained.meta, phi, test_tasks).tolist() if method == "imaml" else []
    )
    probe = FewShot(*(t[: args.curvature_tasks] for t in test_tasks))
    return Run(
        method,
        shots,
        trained.meta,
        trained.history,
        seconds,
        cpu_seconds,
        mean,
        ci,
        dict(counts),
        worst_stat,
        worst_res,
        negative,
        test_stat,
        top_curvature(predict, trained.meta, probe) if args.curvature_tasks else math.nan,
    )


def outer_lr(method: str, args: argparse.Namespace) -> float:
    """Adam's learning rate for ``method`` (iMAML's is smaller: see the module docstring)."""
    return args.imaml_outer_lr if method == "imaml" else args.outer_lr


def relu_check(args: argparse.Namespace, pools: tuple[Pool, Pool]) -> dict[str, float]:
    """Median ‖∇‖ after iMAML's inner solve at the initial θ, for ReLU and for SiLU (1-shot
    meta-train tasks); empty for ``--check-tasks 0``."""
    out: dict[str, float] = {}
    if not args.check_tasks:
        return out
    gen = torch.Generator().manual_seed(7)
    tasks = sample_tasks(pools[0], args.check_tasks, args.ways, 1, args.query, gen)
    for activation in ("relu", "silu"):
        predict = make_predict(activation)
        cfg = configs(predict, args)["imaml"]
        meta = init_params(torch.Generator().manual_seed(args.seed), args.channels, args.ways)
        phi = solve(cfg.problem, cfg.solver, meta, Batch(tasks))
        out[activation] = float(stationarity(cfg, meta, phi, tasks).median())
    return out


# ------------------------------------------------------------------------------------- plotting
def plot(runs: list[Run], baselines: dict[int, dict[str, tuple[float, str]]], path: Path) -> None:
    """Per shot count: query loss during meta-training, held-out accuracy, iMAML's ‖∇‖."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({r.shots for r in runs})
    fig, axes = plt.subplots(len(shots), 3, figsize=(15, 4 * len(shots)), squeeze=False)
    for row, k in zip(axes, shots, strict=True):
        loss_ax, acc_ax, stat_ax = row
        for r in (r for r in runs if r.shots == k):
            steps, loss = r.history.series("outer_loss")
            w = max(1, min(20, len(loss) // 10))
            smooth = [sum(loss[max(0, i - w + 1) : i + 1]) / len(loss[max(0, i - w + 1) : i + 1])
                      for i in range(len(loss))]  # fmt: skip
            loss_ax.plot(steps, smooth, color=COLORS[r.method], label=LABELS[r.method])
            acc_ax.plot(
                *r.history.series("test accuracy"), "o-", ms=3, color=COLORS[r.method],
                label=f"{LABELS[r.method]} ({r.seconds:.0f} s)",
            )  # fmt: skip
            if r.stationarity_steps:
                stat_ax.semilogy(r.stationarity_steps, color=COLORS[r.method], lw=0.8,
                                 label="inner ‖∇‖, worst task of the meta-batch")  # fmt: skip
                stat_ax.semilogy(r.residual_steps, color="C4", lw=0.8, alpha=0.7,
                                 label="CG relative residual, worst task")  # fmt: skip
        for name, (value, color) in baselines[k].items():
            acc_ax.axhline(value, ls="--", lw=1, color=color, label=name)
        acc_ax.axhline(0.2, ls=":", lw=1, color="r", label="chance (20%)")
        stat_ax.axhline(STATIONARITY_TOL, ls=":", color="r", label="stationarity_tol 1e-4")
        loss_ax.set(xlabel="meta-step", ylabel="query cross-entropy after adaptation",
                    title=f"5-way {k}-shot: meta-training (meta-train tasks)")  # fmt: skip
        acc_ax.set(xlabel="meta-step", ylabel="query accuracy",
                   title=f"5-way {k}-shot: held-out test tasks")  # fmt: skip
        stat_ax.set(xlabel="meta-step", title=f"5-way {k}-shot: iMAML diagnostics")
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="K per class")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--ways", type=int, default=5, help="classes per task")
    parser.add_argument("--query", type=int, default=15, help="query images per class")
    parser.add_argument("--meta-steps", type=int, default=300, help="outer (Adam) steps")
    parser.add_argument("--meta-batch", type=int, default=8, help="tasks per outer step")
    parser.add_argument("--outer-lr", type=float, default=1e-3, help="Adam's lr, (FO)MAML")
    parser.add_argument("--imaml-outer-lr", type=float, default=2e-4, help="Adam's lr, iMAML")
    parser.add_argument("--inner-lr", type=float, default=0.4, help="(FO)MAML's inner step")
    parser.add_argument("--inner-steps", type=int, default=5, help="(FO)MAML's inner steps")
    parser.add_argument("--lam", type=float, default=2.0, help="iMAML's λ")
    parser.add_argument("--imaml-lr", type=float, default=0.03, help="iMAML's inner step")
    parser.add_argument("--imaml-momentum", type=float, default=0.7, help="heavy-ball μ")
    parser.add_argument("--imaml-steps", type=int, default=50, help="iMAML's inner steps")
    parser.add_argument("--cg-steps", type=int, default=5, help="iMAML's CG iterations")
    parser.add_argument("--channels", type=int, default=32, help="conv channels")
    parser.add_argument("--activation", choices=("silu", "relu"), default="silu")
    parser.add_argument("--test-tasks", type=int, default=600, help="meta-test tasks")
    parser.add_argument("--curve-tasks", type=int, default=100, help="tasks for the curves")
    parser.add_argument("--every", type=int, default=25, help="meta-steps between curve points")
    parser.add_argument("--curvature-tasks", type=int, default=4, help="0: skip that check")
    parser.add_argument(
        "--check-tasks", type=int, default=50, help="tasks for the ReLU/SiLU check (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="plot and report")
    add_threads_option(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument(
        "--quick", action="store_true", help=f"a smoke run: other defaults become {QUICK}"
    )
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; options given explicitly still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    for name in ("ways", "query", "meta_batch", "test_tasks", "curve_tasks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.meta_steps < 0 or args.every < 0 or min(args.shots) < 1:
        parser.error("--meta-steps and --every must be ≥ 0, --shots ≥ 1")
    if args.ways > len(ROTATIONS) * len(TEST_DIGITS):
        parser.error(f"--ways must be at most {len(ROTATIONS) * len(TEST_DIGITS)} (test classes)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Meta-train and meta-test every method at every shot count; print, plot, write the report.

    Returns:
        ``{"runs": {(shots, method): Run}, "untrained": {(shots, method): accuracy},
        "nearest_neighbour": {shots: accuracy}, "relu_check": ..., "plot": path, ...}``.
    """
    args = parse_args(argv)
    set_threads(args.threads)
    start = time.perf_counter()
    pools = load_pools()
    predict = make_predict(args.activation)
    cfgs = configs(predict, args)
    meta0 = init_params(torch.Generator().manual_seed(args.seed), args.channels, args.ways)
    n_params = sum(t.numel() for t in meta0.values())
    print(
        f"load_digits, classes = digit × rotation: meta-train {len(pools[0].names)} classes "
        f"({pools[0].size} images with the rotations), meta-test digits {TEST_DIGITS}: "
        f"{len(pools[1].names)} classes ({pools[1].size} images); {args.ways}-way, "
        f"{args.query} query images per class"
    )
    print(
        f"model: conv net, {n_params:,} parameters, {args.activation}; {args.meta_steps} "
        f"meta-steps × {args.meta_batch} tasks, Adam lr {args.outer_lr:g} "
        f"(iMAML {args.imaml_outer_lr:g})"
    )
    relu = relu_check(args, pools)
    if relu:
        print(
            f"iMAML inner solve at the initial θ, median ‖∇‖ over {args.check_tasks} tasks: ReLU "
            f"{relu['relu']:.1e}, SiLU {relu['silu']:.1e} (Implicit warns above "
            f"{STATIONARITY_TOL:g})"
        )

    runs: dict[tuple[int, str], Run] = {}
    untrained: dict[tuple[int, str], tuple[float, float]] = {}
    nn: dict[int, tuple[float, float]] = {}
    curvature0 = math.nan
    for shots in args.shots:
        gen = torch.Generator().manual_seed(10_000 + 100 * args.seed + shots)
        test_tasks = sample_tasks(pools[1], args.test_tasks, args.ways, shots, args.query, gen)
        curve_tasks = sample_tasks(pools[1], args.curve_tasks, args.ways, shots, args.query, gen)
        nn[shots] = interval(nearest_neighbour(test_tasks))
        for method in args.methods:
            untrained[shots, method] = interval(
                accuracies(cfgs[method], predict, meta0, test_tasks)[0]
            )
            runs[shots, method] = r = train(
                method, cfgs[method], predict, meta0, shots, pools, (test_tasks, curve_tasks), args
            )
            print(
                f"{LABELS[method]}, {shots}-shot: {100 * r.accuracy:.1f} ± {100 * r.ci:.1f}% "
                f"(from θ₀: {100 * untrained[shots, method][0]:.1f}%), trained in "
                f"{r.seconds:.0f} s ({r.cpu_seconds:.0f} s CPU), warnings {r.warnings or 'none'}",
                flush=True,
            )
        if args.curvature_tasks and math.isnan(curvature0):
            probe = FewShot(*(t[: args.curvature_tasks] for t in test_tasks))
            curvature0 = top_curvature(predict, meta0, probe)

    body = report(args, runs, untrained, nn, curvature0, relu, n_params)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fewshot_digits.png"
    baselines = {
        k: {
            "1-NN in pixel space": (nn[k][0], "grey"),
            **{
                f"{LABELS[m]}, no meta-training": (untrained[k, m][0], COLORS[m])
                for m in args.methods
                if m != "fomaml"  # FOMAML adapts exactly as MAML does
            },
        }
        for k in args.shots
    }
    plot(list(runs.values()), baselines, path)
    seconds = time.perf_counter() - start
    write_section(
        args.out,
        "fewshot_digits",
        "Few-shot digits (Omniglot stand-in): MAML, first-order MAML, iMAML",
        body,
        seconds=seconds,
        argv=argv,
        images=[path],
    )
    print(f"\nsaved {path} and {args.out / 'fewshot_digits.md'} ({seconds:.0f} s in all)")
    return {
        "runs": runs,
        "untrained": untrained,
        "nearest_neighbour": nn,
        "relu_check": relu,
        "curvature_init": curvature0,
        "plot": path,
        "seconds": seconds,
    }


def report(
    args: argparse.Namespace,
    runs: dict[tuple[int, str], Run],
    untrained: dict[tuple[int, str], tuple[float, float]],
    nn: dict[int, tuple[float, float]],
    curvature0: float,
    relu: dict[str, float],
    n_params: int,
) -> str:
    """Print the tables and return them as the Markdown body of the docs section."""
    chance = 1 / args.ways
    floor = 2 * chance  # "far above chance": the lower end of the 95% interval above 2 × chance
    verdicts = []
    lines = [
        f"5-way classification on `load_digits` with classes = digit × {len(ROTATIONS)} rotations; "
        f"meta-train: digits {sorted(set(range(10)) - set(TEST_DIGITS))} (28 classes), meta-test: "
        f"digits {list(TEST_DIGITS)} (12 classes, no test image seen in training). Conv net with "
        f"per-image norms and SiLU ({n_params:,} parameters); each method: {args.meta_steps} "
        f"Adam steps × {args.meta_batch} tasks (lr {args.outer_lr:g} for MAML and FOMAML, "
        f"{args.imaml_outer_lr:g} for iMAML), same initial θ and task stream; MAML/FOMAML "
        f"{args.inner_steps} inner steps of lr {args.inner_lr}; iMAML λ = "
        f"{args.lam:g}, {args.imaml_steps} heavy-ball steps (lr {args.imaml_lr}, momentum "
        f"{args.imaml_momentum}), {args.cg_steps} CG steps. Accuracy on the query sets of "
        f"{args.test_tasks} test tasks ± 1.96·std/√n; training time is `fit`'s (wall and CPU, "
        f"{args.threads} thread).",
        "",
        "Reference (docs/references.md): no published number for this stand-in; the target is "
        f"accuracy far above the {chance:.0%} chance level (here: the lower end of the 95% "
        f"interval above {floor:.0%}). For context, Omniglot 5-way 1-shot: MAML 98.7 ± 0.4, "
        "iMAML-GD 99.16 ± 0.35 (paper; 4-layer conv nets, 1,200 training characters).",
    ]
    for shots in args.shots:
        rows = []
        for method in args.methods:
            r = runs[shots, method]
            u = untrained[shots, method]
            warned = ", ".join(f"{v} {k}" for k, v in sorted(r.warnings.items())) or "none"
            ok = r.accuracy - r.ci > floor
            verdicts.append(ok)
            rows.append(
                [
                    LABELS[method],
                    f"{100 * r.accuracy:.1f} ± {100 * r.ci:.1f}",
                    f"{100 * u[0]:.1f} ± {100 * u[1]:.1f}",
                    f"{r.seconds:.0f} s / {r.cpu_seconds:.0f} s",
                    warned,
                    "PASS" if ok else "FAIL",
                ]
            )
        rows.append(
            ["1-NN in pixel space (no learning)", f"{100 * nn[shots][0]:.1f} ± "
             f"{100 * nn[shots][1]:.1f}", "", "", "", ""]
        )  # fmt: skip
        table = md_table(
            [
                f"5-way {shots}-shot",
                "meta-trained, accuracy %",
                "same adaptation from the initial θ, %",
                "training wall / CPU",
                "hypergrad warnings in training (≤ 1 per kind and step)",
                f"> {floor:.0%}",
            ],
            rows,
        )
        lines += ["", table]
    imaml = [runs[k, "imaml"] for k in args.shots if (k, "imaml") in runs]
    if imaml:
        rows = []
        for r in imaml:
            stat = r.stationarity_steps
            tail = stat[len(stat) // 2 :] or [math.nan]
            test = sorted(r.test_stationarity) or [math.nan]
            rows.append(
                [
                    f"{r.shots}-shot",
                    f"{statistics.median(tail):.1e} / {max(tail):.1e}",
                    f"{statistics.median(r.residual_steps or [math.nan]):.2f}",
                    str(r.negative_curvature),
                    f"{statistics.median(test):.1e} / {test[-1]:.1e} "
                    f"({sum(t <= STATIONARITY_TOL for t in test)}/{len(test)} ≤ 1e-4)",
                    f"{curvature0:.0f} → {r.curvature:.0f}",
                ]
            )
        lines += [
            "",
            "iMAML diagnostics (from `res.info` in `fit`'s callback, and at the meta-test): "
            "`Implicit` relies on a stationary inner solution and CG; both are measured, and the "
            "warnings above are `hypergrad`'s, counted, not silenced.",
            "",
            md_table(
                [
                    "iMAML",
                    "worst-task ‖∇‖ per step, 2nd half of training: median / max",
                    "CG relative residual (median of the worst task)",
                    "CG negative curvature (tasks)",
                    "meta-test ‖∇‖: median / max",
                    "top Hessian eigenvalue at θ: initial → trained",
                ],
                rows,
            ),
        ]
    if imaml:
        # heavy ball on H + λI is stable while every eigenvalue h + λ < (1 + √μ)²/α
        limit = (1 + math.sqrt(args.imaml_momentum)) ** 2 / args.imaml_lr - args.lam
        lines += [
            "",
            f"The meta-learned θ sharpens: the heavy-ball inner loop is stable only while the "
            f"support loss's Hessian eigenvalues stay below (1 + √μ)²/α − λ ≈ {limit:.0f}; the "
            f"trained θ's top eigenvalue is "
            + ", ".join(f"{r.curvature:.0f} ({r.shots}-shot)" for r in imaml)
            + ". iMAML's meta-gradient sees only φ*, not the path from θ to it, so nothing in it "
            "resists the sharpening; iMAML therefore gets a smaller outer learning rate "
            f"({args.imaml_outer_lr:g}). Measured with MAML's {args.outer_lr:g} instead "
            "(seed 0, `--imaml-outer-lr 1e-3`): 5-shot iMAML reached 92% on the curve tasks by "
            "step 50, then its inner solves stopped converging (worst task ‖∇‖ > 1 from step ≈ "
            "60 on, CG met negative curvature in 587 task-solves, the top eigenvalue at θ went "
            "11 → 135 by step 80, on 3 meta-train tasks) and it ended at 83.0 ± 0.9%, below the "
            "88.0% of adapting θ₀; "
            "1-shot iMAML ended at 80.3 ± 0.7% with divergent tasks from step ≈ 140 on.",
        ]
    if relu:
        lines += [
            "",
            f"Why SiLU: iMAML's inner solve at the initial θ ends at a median ‖∇‖ of "
            f"{relu['relu']:.1e} with ReLU and {relu['silu']:.1e} with SiLU ({args.check_tasks} "
            f"1-shot tasks, the same {args.imaml_steps} heavy-ball steps).",
        ]
    gains = [runs[k, m].accuracy - untrained[k, m][0] for k, m in runs]
    beaten = [k for k in args.shots if all(nn[k][0] > runs[k, m].accuracy for m in args.methods)]
    lines += [
        "",
        f"Verdict: {'PASS' if all(verdicts) else 'FAIL'} — every method's 95% interval lies "
        f"{'above' if all(verdicts) else 'not always above'} {floor:.0%}. Meta-training "
        f"improves on adapting the untrained θ₀ by {100 * min(gains):+.1f} to "
        f"{100 * max(gains):+.1f} points."
        + (
            f" But 1-nearest-neighbour in pixel space beats every meta-learner at "
            f"{', '.join(f'{k}-shot' for k in beaten)}: with seven training digits the "
            "meta-learned initialisation does not transfer to new digits better than raw pixel "
            "distance does (Omniglot has 1,200 training characters)."
            if beaten
            else ""
        ),
    ]
    text = "\n".join(lines)
    print("\n" + text)
    return text


if __name__ == "__main__":
    main()
