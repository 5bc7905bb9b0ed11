"""Shared test settings: hypothesis replays from one seed; float64 helpers."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

# Every property test draws its examples from one fixed seed, so a failure replays exactly.
settings.register_profile(
    "bilevel",
    derandomize=True,
    deadline=None,
    max_examples=int(os.environ.get("BILEVEL_HYPOTHESIS_EXAMPLES", "15")),
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("bilevel")

torch.set_num_threads(min(2, torch.get_num_threads()))
