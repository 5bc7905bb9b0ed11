"""The layering rules of DESIGN.md, lint and types, checked on the source itself."""

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
# solvers may use these leaf modules of bilevel and nothing else of it (DESIGN.md, layering).
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
    [p for p in _python_files(CORE) if "backends" not in p.parts],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_core_above_the_seam_never_imports_torch_or_jax(path: Path) -> None:
    bad = [n for n in _imports(path, top_level_only=False) if n.split(".")[0] in {"torch", "jax"}]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}; go through bilevel.backends"


# recipes and trainer compose the core with solvers (DESIGN.md): they may import solvers, and the
# curated bilevel/__init__.py must not import them.
COMPOSERS = {"recipes.py", "trainer.py"}


@pytest.mark.parametrize(
    "path",
    [p for p in _python_files(CORE) if p.name not in COMPOSERS],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_core_never_imports_solvers_at_module_level(path: Path) -> None:
    bad = [n for n in _imports(path, top_level_only=True) if n.split(".")[0] == "solvers"]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad} at module level"


@pytest.mark.parametrize("path", _python_files(SOLVERS), ids=lambda p: str(p.relative_to(ROOT)))
def test_solvers_import_only_the_leaf_modules_of_bilevel(path: Path) -> None:
    used = {n for n in _imports(path, top_level_only=False) if n.split(".")[0] == "bilevel"}
    bad = {
        n for n in used if not any(n == ok or n.startswith(ok + ".") for ok in SOLVERS_MAY_IMPORT)
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_package_init_does_not_import_the_composers() -> None:
    used = _imports(CORE / "__init__.py", top_level_only=False)
    bad = [n for n in used if n.split(".")[-1] in {c.removesuffix(".py") for c in COMPOSERS}]
    assert not bad, f"bilevel/__init__.py imports {bad}; users import them explicitly"


def test_importing_bilevel_imports_no_ad_framework() -> None:
    code = "import sys, bilevel, solvers; print('torch' in sys.modules)"
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
