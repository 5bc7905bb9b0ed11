"""The layering rules (README.md, "Package layout" and "Backends"), lint and types, checked on
the source itself."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "bilevel"
SOLVERS = ROOT / "solvers"
# solvers may use these leaf modules of bilevel and nothing else of it (layering).
SOLVERS_MAY_IMPORT = {"bilevel.backends", "bilevel.tree", "bilevel.protocols", "bilevel.validate"}


def _imports(path: Path, top_level_only: bool) -> list[str]:
    module = ast.parse(path.read_text(), filename=str(path))
    nodes = module.body if top_level_only else list(ast.walk(module))
    names: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from bilevel import tree" uses bilevel.tree; "from bilevel.tree import x" too.
            if node.module == "bilevel":
                names += [f"bilevel.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return names


def _python_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


@pytest.mark.parametrize(
    "path",
    [p for p in _python_files(CORE) if "backends" not in p.parts and "solvers" not in p.parts],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_core_above_the_seam_never_imports_torch_or_jax(path: Path) -> None:
    bad = [n for n in _imports(path, top_level_only=False) if n.split(".")[0] in {"torch", "jax"}]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}; go through bilevel.backends"


def _is_solvers(name: str) -> bool:
    return name == "bilevel.solvers" or name.startswith("bilevel.solvers.")


# recipes and trainer compose the core with solvers (README.md, Concepts): they may import
# solvers, and the curated bilevel/__init__.py must not import them.
COMPOSERS = {"recipes.py", "trainer.py"}


@pytest.mark.parametrize(
    "path",
    [p for p in _python_files(CORE) if p.name not in COMPOSERS and "solvers" not in p.parts],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_core_never_imports_solvers_at_module_level(path: Path) -> None:
    bad = [n for n in _imports(path, top_level_only=True) if _is_solvers(n)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad} at module level"


@pytest.mark.parametrize("path", _python_files(SOLVERS), ids=lambda p: str(p.relative_to(ROOT)))
def test_solvers_import_only_the_leaf_modules_of_bilevel(path: Path) -> None:
    used = {
        n
        for n in _imports(path, top_level_only=False)
        if n.split(".")[0] == "bilevel" and not _is_solvers(n)
    }
    bad = {
        n for n in used if not any(n == ok or n.startswith(ok + ".") for ok in SOLVERS_MAY_IMPORT)
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_package_init_does_not_import_the_composers() -> None:
    used = _imports(CORE / "__init__.py", top_level_only=False)
    bad = [n for n in used if n.split(".")[-1] in {c.removesuffix(".py") for c in COMPOSERS}]
    assert not bad, f"bilevel/__init__.py imports {bad}; users import them explicitly"


def test_importing_bilevel_imports_no_ad_framework() -> None:
    code = "import sys, bilevel; from bilevel import solvers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e .[dev])")
    return path


def test_ruff_lint_and_format() -> None:
    ruff = _tool("ruff")
    targets = ["bilevel", "solvers", "tests"]
    lint = subprocess.run([ruff, "check", *targets], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [ruff, "format", "--check", *targets], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_solvers_install_as_bilevel_solvers_and_nothing_named_solvers_at_top_level(
    tmp_path: Path,
) -> None:
    # Run from an empty folder, so the repository root is not on sys.path: what the install
    # provides, not what the checkout happens to hold. A top-level ``solvers`` would clash with
    # the unrelated distribution of that name and be shadowed by any user's solvers.py.
    code = (
        "import importlib.util, bilevel\n"
        "from bilevel import solvers\n"
        "from bilevel.solvers import CG, GradientDescent\n"
        "print(solvers.__name__, importlib.util.find_spec('solvers'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.split() == ["bilevel.solvers", "None"], out.stdout + out.stderr


def test_a_users_own_solvers_module_does_not_shadow_bilevels(tmp_path: Path) -> None:
    (tmp_path / "solvers.py").write_text("raise ImportError('the user module was imported')\n")
    code = "from bilevel import recipes, solvers; print(solvers.CG.__module__)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "bilevel.solvers.linear", out.stdout + out.stderr
