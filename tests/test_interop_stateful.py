"""Stateful PyTorch code as inner solvers (solvers.interop), the interop examples, and the
"Coming from higher / torchopt / learn2learn" page.

References: higher's own unrolled MAML (``higher.innerloop_ctx`` with the same ``torch.optim``
optimizer, autograd of the query loss with respect to the module's initial parameters) and
``torch.optim``'s own ``step()``. Tolerance 1e-10 relative to the largest entry of the
reference (float64): the compared computations are the same arithmetic in different op orders
(measured differences 0 to 1e-15), so 1e-10 is generous and still far below any modelling
difference (higher's Adam vs torch.optim's Adam differ by ~1e-5 here, see
``test_higher_adam_is_not_torch_optim_adam``).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from _examples import load_example
from torch import nn

from bilevel import Batch, FirstOrder, ForwardMode, Problem, Truncated, Unrolled, hypergrad, solvers
from bilevel.solvers.interop import Higher, from_module, from_torch_optim
from bilevel.testing import check_hypergrad

higher = pytest.importorskip("higher")
torchopt = pytest.importorskip("torchopt")

DTYPE = torch.float64
RTOL = 1e-10
ROOT = Path(__file__).resolve().parent.parent
K = 4

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "sgd-nesterov-decay-dampening": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01
    ),
    "adam": lambda p: torch.optim.Adam(p, lr=0.05),
    "adam-decay-amsgrad": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.01, amsgrad=True),
}


def _module(seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    module = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).to(DTYPE)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DTYPE) * 0.7)
    return module


def _tasks(n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    amp = 0.1 + 4.9 * torch.rand(n, 1, 1, generator=gen, dtype=DTYPE)
    phase = math.pi * torch.rand(n, 1, 1, generator=gen, dtype=DTYPE)
    xs = -5 + 10 * torch.rand(n, 10, 1, generator=gen, dtype=DTYPE)
    xq = -5 + 10 * torch.rand(n, 10, 1, generator=gen, dtype=DTYPE)
    return {
        "xs": xs,
        "ys": amp * torch.sin(xs + phase),
        "xq": xq,
        "yq": amp * torch.sin(xq + phase),
    }


def _problem(predict) -> Problem:
    def mse(p, x, y):
        return ((predict(p, x) - y) ** 2).mean()

    return Problem(
        init=lambda meta, task: meta,
        inner_loss=lambda p, meta, t: mse(p, t["xs"], t["ys"]),
        outer_loss=lambda p, meta, t: mse(p, t["xq"], t["yq"]),
    )


def _higher_maml(make_opt, tasks: dict[str, torch.Tensor], steps: int = K) -> dict:
    """higher's MAML: innerloop_ctx per task, mean query loss, autograd to the initial params."""
    module = _module()
    opt = make_opt(module.parameters())
    n = tasks["xs"].shape[0]
    total = torch.zeros((), dtype=DTYPE)
    for i in range(n):
        t = {k: v[i] for k, v in tasks.items()}
        with higher.innerloop_ctx(module, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(((fmodel(t["xs"]) - t["ys"]) ** 2).mean())
            total = total + ((fmodel(t["xq"]) - t["yq"]) ** 2).mean()
    grads = torch.autograd.grad(total / n, list(module.parameters()))
    return dict(zip([name for name, _ in module.named_parameters()], grads, strict=True))


def _close(got: dict, want: dict, rtol: float = RTOL) -> float:
    assert got.keys() == want.keys()
    scale = max(float(w.abs().max()) for w in want.values())
    assert scale > 0, "the reference is zero: the comparison would be vacuous"
    err = max(float((got[k] - want[k]).abs().max()) for k in want) / scale
    assert err <= rtol, f"relative difference {err:.3g} > {rtol:g}"
    return err


# ------------------------------------------------------------------ Higher: higher's own update


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_higher_adapter_equals_higher_innerloop_ctx(name: str) -> None:
    tasks = _tasks()
    module = _module()
    predict, meta = from_module(module)
    solver = Higher(module, OPTIMIZERS[name](module.parameters()), K)
    res = hypergrad(_problem(predict), solver, meta, Batch(tasks), strategy=Unrolled())
    _close(res.grad, _higher_maml(OPTIMIZERS[name], tasks))


@pytest.mark.parametrize("strategy", [Truncated(K), ForwardMode()], ids=repr)
def test_higher_adapter_under_other_strategies(strategy) -> None:
    tasks = _tasks()
    module = _module()
    predict, meta = from_module(module)
    solver = Higher(module, OPTIMIZERS["adam"](module.parameters()), K)
    res = hypergrad(_problem(predict), solver, meta, Batch(tasks), strategy=strategy)
    _close(res.grad, _higher_maml(OPTIMIZERS["adam"], tasks))


def test_higher_adapter_passes_check_hypergrad() -> None:
    module = _module()
    predict, meta = from_module(module)
    task = {k: v[0] for k, v in _tasks().items()}
    solver = Higher(module, torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.5), 3)
    check_hypergrad(_problem(predict), solver, meta, task, FirstOrder())
    check_hypergrad(_problem(predict), solver, meta, task, Unrolled())


def test_higher_adapter_equals_gradient_descent() -> None:
    """higher's SGD (dampening 0) is heavy ball: GradientDescent(lr, K, momentum)."""
    tasks = Batch(_tasks())
    module = _module()
    predict, meta = from_module(module)
    problem = _problem(predict)
    for momentum in (0.0, 0.9):
        opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=momentum)
        a = hypergrad(problem, Higher(module, opt, K), meta, tasks, strategy=Unrolled())
        gd = solvers.GradientDescent(0.1, K, momentum)
        b = hypergrad(problem, gd, meta, tasks, strategy=Unrolled())
        _close(a.grad, b.grad)
        _close(a.params, b.params)


def test_higher_adam_is_not_torch_optim_adam() -> None:
    """higher's DifferentiableAdam adds eps to √v before the bias correction (torch < 1.5);
    torch.optim.Adam, solvers.Adam and from_torch_optim add it after. The difference is real
    and documented, far above RTOL; with eps → 0 it vanishes."""
    tasks = Batch(_tasks())
    module = _module()
    predict, meta = from_module(module)
    problem = _problem(predict)

    def both(eps: float) -> tuple[dict, dict]:
        opt = torch.optim.Adam(module.parameters(), lr=0.05, eps=eps)
        a = hypergrad(problem, Higher(module, opt, K), meta, tasks, strategy=Unrolled()).grad
        ours = solvers.Optimizer(from_torch_optim(opt), K)
        b = hypergrad(problem, ours, meta, tasks, strategy=Unrolled()).grad
        return a, b

    a, b = both(1e-8)
    with pytest.raises(AssertionError):
        _close(a, b, rtol=1e-8)
    _close(*both(1e-300))


def test_higher_adapter_errors() -> None:
    module = _module()
    with pytest.raises(TypeError, match=r"AdamW is not supported; supported: torch\.optim\.SGD"):
        Higher(module, torch.optim.AdamW(module.parameters(), lr=0.1), 1)
    with pytest.raises(TypeError, match="ignores maximize"):
        Higher(module, torch.optim.SGD(module.parameters(), lr=0.1, maximize=True), 1)
    with pytest.raises(TypeError, match="not parameters of the module"):
        Higher(module, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), 1)
    with pytest.raises(TypeError, match=r"torch\.optim optimizer instance"):
        Higher(module, torchopt.sgd(0.1), 1)
    predict, _ = from_module(module)
    solver = Higher(module, torch.optim.SGD(module.parameters(), lr=0.1), 1)
    with pytest.raises(TypeError, match="module's parameter names"):
        hypergrad(_problem(predict), solver, {"w": torch.zeros(1)}, None, strategy=Unrolled())


# ------------------------------------------------------------ from_torch_optim: a pure transform


def _torch_optim_steps(make_opt, grads: list[torch.Tensor], w0: torch.Tensor) -> torch.Tensor:
    w = w0.clone().requires_grad_()
    opt = make_opt([w])
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach()


TORCH_OPTIMIZERS = {
    **OPTIMIZERS,
    "sgd-nesterov-maximize": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.8, nesterov=True, maximize=True, weight_decay=0.1
    ),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, betas=(0.8, 0.9), weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01),
    "rmsprop-centered-momentum": lambda p: torch.optim.RMSprop(
        p, lr=0.01, momentum=0.9, centered=True, weight_decay=0.01
    ),
}


@pytest.mark.parametrize("name", list(TORCH_OPTIMIZERS))
def test_from_torch_optim_equals_torch_optim_step(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(5, generator=gen, dtype=DTYPE)
    grads = [torch.randn(5, generator=gen, dtype=DTYPE) for _ in range(6)]
    want = _torch_optim_steps(TORCH_OPTIMIZERS[name], grads, w0)
    transform = from_torch_optim(TORCH_OPTIMIZERS[name]([w0.clone().requires_grad_()]))
    w, state = w0, transform.init(w0)
    for g in grads:
        u, state = transform.update(g, state, w)
        w = w + u
    torch.testing.assert_close(w, want, rtol=RTOL, atol=0)


@pytest.mark.parametrize("name", ["sgd", "sgd-momentum", "sgd-nesterov-decay-dampening"])
def test_from_torch_optim_equals_higher_innerloop_ctx(name: str) -> None:
    tasks = _tasks()
    module = _module()
    predict, meta = from_module(module)
    solver = solvers.Optimizer(from_torch_optim(OPTIMIZERS[name](module.parameters())), K)
    res = hypergrad(_problem(predict), solver, meta, Batch(tasks), strategy=Unrolled())
    _close(res.grad, _higher_maml(OPTIMIZERS[name], tasks))


def test_from_torch_optim_adam_equals_solvers_adam_under_every_strategy() -> None:
    tasks = Batch(_tasks())
    module = _module()
    predict, meta = from_module(module)
    problem = _problem(predict)
    transform = from_torch_optim(torch.optim.Adam(module.parameters(), lr=0.05))
    ours = solvers.Optimizer(transform, K)
    adam = solvers.Optimizer(solvers.Adam(0.05), K)
    ref = hypergrad(problem, adam, meta, tasks, strategy=Unrolled())
    for strategy in (Unrolled(), ForwardMode()):
        _close(hypergrad(problem, ours, meta, tasks, strategy=strategy).grad, ref.grad)
    first_order = hypergrad(problem, adam, meta, tasks, strategy=FirstOrder())
    _close(hypergrad(problem, ours, meta, tasks, strategy=FirstOrder()).grad, first_order.grad)
    # Truncated detaches the whole state: a state of tensors only (our step count is a tensor)
    truncated = hypergrad(problem, ours, meta, tasks, strategy=Truncated(2)).grad
    assert all(bool(torch.isfinite(g).all()) for g in truncated.values())


def test_from_torch_optim_zero_gradient_coordinate_is_finite() -> None:
    """A coordinate whose gradient is identically 0 has v = 0; √v's derivative there is taken
    as 0 (higher masks it likewise), so reverse and forward mode stay finite and agree with
    higher's hypergradient."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 2, generator=gen, dtype=DTYPE)
    x[:, 1] = 0
    y = torch.randn(10, 1, generator=gen, dtype=DTYPE)
    module = nn.Linear(2, 1).to(DTYPE)
    predict, meta = from_module(module)
    task = {"xs": x, "ys": y, "xq": x + 1, "yq": y}
    opt = torch.optim.Adam(module.parameters(), lr=0.1, eps=1e-300)
    want = None
    with higher.innerloop_ctx(module, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(3):
            diffopt.step(((fmodel(x) - y) ** 2).mean())
        out = ((fmodel(x + 1) - y) ** 2).mean()
        grads = torch.autograd.grad(out, [module.weight, module.bias])
        want = dict(zip(["weight", "bias"], grads, strict=True))
    solver = solvers.Optimizer(from_torch_optim(opt), 3)
    for strategy in (Unrolled(), ForwardMode()):
        _close(hypergrad(_problem(predict), solver, meta, task, strategy=strategy).grad, want)


def test_from_torch_optim_errors() -> None:
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match=r"Adagrad is not supported; supported: torch.optim.SGD"):
        from_torch_optim(torch.optim.Adagrad([w], lr=0.1))
    with pytest.raises(TypeError, match="different hyperparameters"):
        from_torch_optim(torch.optim.SGD([{"params": [w]}, {"params": [], "lr": 0.2}], lr=0.1))
    with pytest.raises(TypeError, match="tensor hyperparameters"):
        from_torch_optim(torch.optim.Adam([w], lr=torch.tensor(0.1)))
    with pytest.raises(TypeError, match=r"torch\.optim optimizer instance"):
        from_torch_optim(torch.optim.SGD)
    with pytest.raises(TypeError, match=r"torch\.optim optimizer instance"):
        from_torch_optim(torchopt.adam(0.1))

    class MySGD(torch.optim.SGD):
        pass

    with pytest.raises(TypeError, match="MySGD is not supported"):
        from_torch_optim(MySGD([w], lr=0.1))


# --------------------------------------------------------------------- examples and the docs page


def _load(path: Path) -> ModuleType:
    return load_example(path, f"interop_{path.stem}")


EXAMPLES = sorted((ROOT / "examples" / "interop").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_interop_example_agrees_with_its_reference(path: Path, capsys) -> None:
    out = _load(path).main(["--no-progress"])
    assert out["agrees"], out
    assert out["relative_difference"] <= out["tolerance"]
    assert "agrees" in capsys.readouterr().out


def test_there_is_an_example_per_interop_path() -> None:
    assert {p.stem for p in EXAMPLES} == {
        "higher_module_optimizer",
        "torchopt_inner_transform",
        "torch_optim_outer",
    }
