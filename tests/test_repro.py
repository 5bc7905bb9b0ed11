"""examples/repro.py (make repro): every example is listed, sections are joined in order, image
links are rewritten for docs/results.md, and a missing section is named rather than hidden."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from _examples import load_example

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    return load_example(EXAMPLES / f"{name}.py", name)


def test_every_example_is_reproduced() -> None:
    repro = _load("repro")
    scripts = {p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_")} - {"repro"}
    assert set(repro.FULL) == scripts


def test_collect_joins_sections_and_names_missing_ones(tmp_path: Path) -> None:
    repro = _load("repro")
    out = tmp_path / "docs" / "results"
    out.mkdir(parents=True)
    (out / "oja_rule.md").write_text("## Oja\n\n[paper](https://x.org/a)\n\n![oja](oja.png)\n")
    (out / "maml_sinusoid.md").write_text("## MAML\n\nbody\n")
    page = repro.collect(out, tmp_path / "docs" / "results.md").read_text()
    assert page.index("## MAML") < page.index("## Oja")  # FULL's order
    assert "![oja](results/oja.png)" in page and "(https://x.org/a)" in page
    assert "`fewshot_digits`: run `python examples/repro.py fewshot_digits`" in page
