"""dmf_ray: train, sweep, track and serve one-step generators trained by drifting with friction.

``import dmf_ray`` stays light (no torch/MLflow import); heavier entry points load on first use:
``dmf_ray.load_model(uri, tracking_uri=None)`` -> :class:`dmf_ray.serving.inference.Translator`.
"""

from typing import Any

__version__ = '0.1.0'

_LAZY = {"load_model": ("dmf_ray.serving.inference", "load_model")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dmf_ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
