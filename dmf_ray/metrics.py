"""Public import path of the sample-based metrics (they live in :mod:`dmf_ray.eval.metrics`)."""

from dmf_ray.eval.metrics import *  # noqa: F401,F403
