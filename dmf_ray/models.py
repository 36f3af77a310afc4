"""Import path kept for generators logged by the flat layout: their pyfunc code imports it."""

from dmf_ray.core.models import *  # noqa: F401,F403
from dmf_ray.core.models import load_generator  # noqa: F401
