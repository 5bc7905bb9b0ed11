"""A plain install: what works without the extras, what each missing extra says, what ships.

Without a clean virtual environment, each test runs Python in a subprocess whose imports of the
optional packages are refused by a ``sys.meta_path`` finder (as if they were not installed),
and the packaging tests build the sdist and a wheel from it with setuptools' own backend.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Run in the subprocess before anything else: every finder on sys.meta_path answers "not
# found" for the blocked names, so ``import X`` raises ModuleNotFoundError and
# ``importlib.util.find_spec("X")`` returns None, exactly as if X were not installed.
BLOCKER = """
import sys
BLOCKED = {blocked!r}
class _Hide:
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        find = getattr(self.finder, "find_spec", None)
        return None if find is None else find(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
"""


def _run_without(blocked: set[str], code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "plain_install.py"
    script.write_text(BLOCKER.format(blocked=sorted(blocked)) + textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def _ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out.stdout


EVERY_OPTIONAL = {"torch", "jax", "jaxlib", "optax", "torchopt", "higher", "tqdm", "matplotlib"}


def test_import_bilevel_and_its_modules_without_any_optional_package(tmp_path: Path) -> None:
    out = _run_without(
        EVERY_OPTIONAL,
        """
        import bilevel, bilevel.trainer, bilevel.testing, bilevel.recipes, bilevel.rl
        from bilevel import solvers
        from bilevel.solvers import CG, Adam, Scipy, GradientDescent
        print(sorted(m for m in {blocked!r} if m in sys.modules))
        """.replace("{blocked!r}", repr(sorted(EVERY_OPTIONAL))),
        tmp_path,
    )
    assert _ok(out).strip() == "[]"


def test_hypergrad_with_no_ad_framework_names_both_extras(tmp_path: Path) -> None:
    out = _run_without(
        {"torch", "jax", "jaxlib"},
        """
        import numpy as np
        from bilevel import Problem, Unrolled, hypergrad, solvers
        p = Problem(init=lambda m, t: m, inner_loss=lambda w, m, t: ((w - t) ** 2).sum(),
                    outer_loss=lambda w, m, t: (w**2).sum())
        try:
            hypergrad(p, solvers.GradientDescent(lr=0.1, steps=2), np.zeros(2), np.ones(2),
                      strategy=Unrolled())
        except TypeError as e:
            print(e)
        """,
        tmp_path,
    )
    message = _ok(out)
    assert message.startswith("hypergrad: ")
    assert "pip install 'bilevel[torch]'" in message and "pip install 'bilevel[jax]'" in message


def test_fit_without_tqdm_prints_a_plain_progress_line(tmp_path: Path) -> None:
    out = _run_without(
        {"tqdm"},
        """
        import torch
        from bilevel import recipes, solvers
        from bilevel.trainer import fit
        cfg = recipes.maml(lambda p, x: p["w"] * x, lambda p, y: ((p - y) ** 2).mean(),
                           lr=0.1, steps=1)
        x = torch.linspace(-1, 1, 8, dtype=torch.float64)
        task = recipes.FewShot(x, 3 * x, x, 3 * x)
        out = fit(cfg, {"w": torch.tensor(0.0, dtype=torch.float64)}, lambda step: task,
                  optimizer=solvers.SGD(lr=0.5), steps=20, desc="plain")
        print(out.history.last("outer_loss") < 1e-3, "tqdm" in sys.modules)
        """,
        tmp_path,
    )
    assert _ok(out).strip() == "True False"
    lines = [line for line in out.stderr.splitlines() if line.startswith("plain: ")]
    # one line every tenth of the run: steps 2, 4, ..., 20
    assert len(lines) == 10 and lines[-1].startswith("plain: 20/20 outer steps, outer loss ")


def test_history_plot_without_matplotlib_says_what_to_install(tmp_path: Path) -> None:
    out = _run_without(
        {"matplotlib"},
        """
        from bilevel.trainer import History
        h = History()
        h.record("outer_loss", 0, 1.0)
        try:
            h.plot("h.png")
        except ImportError as e:
            print(e)
        """,
        tmp_path,
    )
    message = _ok(out)
    assert "pip install matplotlib" in message and "pip install 'bilevel[examples]'" in message


def test_a_jax_user_needs_no_torch(tmp_path: Path) -> None:
    """hypergrad, fit and check_hypergrad on JAX arrays with torch not installed."""
    pytest.importorskip("jax")
    out = _run_without(
        {"torch", "torchopt", "higher", "tqdm"},
        """
        import jax, jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
        from bilevel import Problem, Implicit, Unrolled, hypergrad, recipes, solvers
        from bilevel.testing import check_hypergrad
        from bilevel.trainer import fit
        p = Problem(init=lambda m, t: jnp.zeros_like(t),
                    inner_loss=lambda w, m, t: ((w - m * t) ** 2).sum() / 2 + (w**2).sum() / 2,
                    outer_loss=lambda w, m, t: ((w - 1.0) ** 2).sum())
        meta, task = jnp.array([0.3, -0.2]), jnp.array([1.0, 2.0])
        gd = solvers.GradientDescent(lr=0.5, steps=60)
        res = hypergrad(p, gd, meta, task, strategy=Implicit(solvers.CG()))
        check_hypergrad(p, gd, meta, task, Unrolled())
        out = fit(recipes.Config(p, gd, Unrolled()), meta, lambda s: task,
                  optimizer=solvers.Adam(0.05), steps=3, progress=False)
        print(len(out.history.series("outer_loss")[0]), "torch" in sys.modules)
        """,
        tmp_path,
    )
    assert _ok(out).strip() == "3 False"


# --------------------------------------------------------------------------- what ships


def _build(tmp_path: Path) -> tuple[Path, Path]:
    """The sdist of a copy of the working tree, and a wheel built from that sdist."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.egg-info", "__pycache__", "build", "dist", ".*_cache", "outputs"
        ),
    )
    dist = tmp_path / "dist"
    build = (
        "import sys; from setuptools import build_meta as b; "
        "d, kind = sys.argv[1:]; "
        "print(b.build_sdist(d) if kind == 'sdist' else b.build_wheel(d))"
    )

    def backend(cwd: Path, kind: str) -> Path:
        out = subprocess.run(
            [sys.executable, "-c", build, str(dist), kind],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return dist / out.stdout.strip().splitlines()[-1]

    sdist = backend(src, "sdist")
    unpacked = tmp_path / "unpacked"
    with tarfile.open(sdist) as tar:
        tar.extractall(unpacked, filter="data")
    wheel = backend(unpacked / sdist.name.removesuffix(".tar.gz"), "wheel")
    return sdist, wheel


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _build(tmp_path_factory.mktemp("packaging"))


def test_the_sdist_ships_the_library_and_no_tests_it_could_not_run(
    built: tuple[Path, Path],
) -> None:
    """The test suite needs the repository (examples/, docs/, benchmarks/, conftest.py): the
    sdist ships none of it rather than tests/test*.py alone (setuptools' default)."""
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert not [n for n in names if n.startswith("tests")], sorted(names)
    assert {"LICENSE", "README.md", "pyproject.toml", "bilevel/__init__.py"} <= names
    assert {"bilevel/solvers/__init__.py", "bilevel/solvers/py.typed", "bilevel/py.typed"} <= names


def test_the_wheel_built_from_the_sdist_installs_bilevel_solvers_only(
    built: tuple[Path, Path],
) -> None:
    _, wheel = built
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"bilevel"}
    assert "bilevel/solvers/inner.py" in names and "bilevel/backends/jax.py" in names


def test_the_metadata_makes_each_framework_an_extra(built: tuple[Path, Path]) -> None:
    _, wheel = built
    with zipfile.ZipFile(wheel) as whl:
        meta_name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(whl.read(meta_name).decode())
    requires = meta.get_all("Requires-Dist") or []
    plain = sorted(r for r in requires if "extra ==" not in r)
    assert plain == ["numpy", "scipy"], plain
    assert 'torch>=2.1; extra == "torch"' in requires
    assert {'jax>=0.4.1; extra == "jax"', 'optax; extra == "jax"'} <= set(requires)
    assert {"torch", "jax", "test", "interop", "examples", "dev"} <= set(
        meta.get_all("Provides-Extra") or []
    )
    summary = meta["Summary"]
    assert "PyTorch" in summary and "JAX" in summary
    urls = {u.split(",")[0].strip().lower() for u in meta.get_all("Project-URL") or []}
    assert {"homepage", "source", "documentation", "issues"} <= urls
    versions = {
        c.rsplit(":: ", 1)[1]
        for c in meta.get_all("Classifier") or []
        if c.startswith("Programming Language :: Python :: 3.")
    }
    assert versions == {"3.10", "3.11", "3.12"}  # tox.ini's envlist
