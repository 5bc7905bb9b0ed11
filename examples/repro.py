"""Run every example at full size and regenerate ``docs/results.md`` (``make repro``).

Each example runs in its own process with the arguments below and writes its section
``docs/results/<name>.md`` and its plots; the sections are then joined in this order. Pick a
subset with ``python examples/repro.py fewshot_digits oja_rule`` (the other sections already in
``docs/results/`` are kept), or only rebuild the page with ``--collect-only``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "results.md"

# name -> the full-size arguments (the published setups of docs/references.md); --out is added.
FULL: dict[str, list[str]] = {
    "maml_sinusoid": ["--iterations", "70000", "--no-progress"],
    "imaml_linear_regression": [],
    "fewshot_digits": ["--no-progress"],
    "metagradient_returns": ["--steps", "10000", "--no-progress"],
    "metagradient_cartpole": ["--no-progress"],
    "synaptic_rule": ["--no-progress"],
    "oja_rule": ["--no-progress"],
    "hyperparameters": ["--no-progress"],
}

HEADER = """# Reproductions

Every number below was measured by the example named in its section, at the full size of the
published setup described in [references.md](references.md) (or the closest one that runs on two
CPU cores without downloads), and is printed beside the reference. Regenerate everything with
`make repro` (several hours on 2 cores: MAML's 70,000 meta-iterations dominate) or one example
with `python examples/repro.py NAME`; the page is rebuilt from `docs/results/*.md`.
"""


def collect(out: Path = OUT, page: Path = PAGE) -> Path:
    """Join the sections found in ``out`` (in :data:`FULL`'s order) into ``page``."""
    sections, missing = [], []
    for name in FULL:
        path = out / f"{name}.md"
        if path.exists():
            text = path.read_text().strip()
            # image links are relative to docs/results/; the page lives in docs/
            prefix = out.relative_to(page.parent).as_posix()
            text = re.sub(r"(!\[[^\]]*\]\()(?!https?:|/)", rf"\g<1>{prefix}/", text)
            sections.append(text)
        else:
            missing.append(name)
    body = [HEADER.strip(), *sections]
    if missing:
        body.append(
            "## Not regenerated yet\n\n"
            + "\n".join(f"- `{n}`: run `python examples/repro.py {n}`" for n in missing)
        )
    page.write_text("\n\n".join(body) + "\n")
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"examples to run (default: all of {list(FULL)})")
    parser.add_argument("--collect-only", action="store_true", help="only rebuild the page")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in FULL]
    if unknown:
        parser.error(f"unknown example(s) {unknown}; choose from {list(FULL)}")
    names = [] if args.collect_only else (args.names or list(FULL))
    failed = []
    for name in names:
        command = [sys.executable, f"examples/{name}.py", *FULL[name]]  # run from ROOT
        command += ["--out", OUT.relative_to(ROOT).as_posix()]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(command, cwd=ROOT)
        print(f"== {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    print(f"wrote {collect()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
