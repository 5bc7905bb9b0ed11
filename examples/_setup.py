"""Shared by the examples: the ``--threads`` option and the one place that sets torch's threads.

Every example runs torch on one CPU thread unless ``--threads N`` says otherwise. The examples'
tensors are tiny (a 1-40-40-1 network, 25 tasks of 10 points), so one operation takes
microseconds and splitting it over threads costs more than it saves. torch's default, one thread
per core, is also fragile on a machine that runs other jobs: its worker threads spin while they
wait for each other, and a spinning thread takes the core that the thread it waits for needs.
Measured on a 2-core machine shared with other jobs (load average 4–9), three alternating runs of
``python examples/maml_sinusoid.py --iterations 300 --methods maml --eval-tasks 100``:
one thread 8.9, 15.8 and 21.8 s of wall time (6.3–9.6 s of CPU), torch's default of two threads
55.7, 248.8 and 201.8 s (45–79 s of CPU, mostly spent spinning): 6–16× slower.
"""

from __future__ import annotations

import argparse

import torch

__all__ = ["DEFAULT_THREADS", "add_threads_option", "set_threads"]

DEFAULT_THREADS = 1


def _at_least_one(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` (default :data:`DEFAULT_THREADS`) to an example's parser."""
    parser.add_argument(
        "--threads",
        type=_at_least_one,
        default=DEFAULT_THREADS,
        help="torch CPU threads (tiny tensors: 1 is fastest, and safe on a shared machine)",
    )


def set_threads(threads: int = DEFAULT_THREADS) -> int:
    """Run torch on ``threads`` CPU threads (``torch.set_num_threads``); return the count.

    Raises:
        ValueError: if ``threads`` is below 1.
    """
    if threads < 1:
        raise ValueError(f"set_threads: threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return torch.get_num_threads()
