"""Import path kept for generators logged by the flat layout: their pyfunc code imports it."""

from dmf_ray.serving.inference import *  # noqa: F401,F403
from dmf_ray.serving.inference import as_float32_batch, run_generator  # noqa: F401
