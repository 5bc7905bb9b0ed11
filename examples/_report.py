"""Shared by the examples: write one section of ``docs/results.md`` (``make repro``).

Every example's ``main(argv)`` accepts ``--out DIR``; besides its plots it writes
``DIR/<name>.md``, a Markdown section (title, the command that produced it, wall time, the
result table beside the reference, the plot). ``examples/repro.py`` (``--collect-only`` to skip
the runs) joins the sections in a fixed order into ``docs/results.md``.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["md_table", "write_section"]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; cells are ``str()``-ed (format numbers before passing them)."""
    if any(len(r) != len(headers) for r in rows):
        raise ValueError(f"md_table: every row needs {len(headers)} cells, got {rows!r}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(
    out: Path,
    name: str,
    title: str,
    body: str,
    *,
    seconds: float,
    argv: Sequence[str] | None = None,
    images: Sequence[Path] = (),
) -> Path:
    """Write ``out/<name>.md``: ``## title``, how it was run, ``body``, then the images.

    Args:
        out: the output folder (the plots live there too; image links are relative to it).
        name: the example's file stem, e.g. ``"fewshot_digits"``.
        title: the section title.
        body: Markdown: the result tables beside the reference, and what they show.
        seconds: the measured wall time of the run.
        argv: the arguments the example ran with (``sys.argv[1:]`` when None).
        images: plots saved under ``out``.

    Returns:
        The path written.
    """
    out.mkdir(parents=True, exist_ok=True)
    args = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python", f"examples/{name}.py", *args])
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"## {title}",
        "",
        f"`{command}` — {seconds:.0f} s wall time, {stamp}, "
        f"Python {platform.python_version()} on {platform.machine()}.",
        "",
        body.strip(),
        "",
    ]
    for image in images:
        rel = image.relative_to(out) if image.is_relative_to(out) else image
        lines += [f"![{name}]({rel.as_posix()})", ""]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return path
