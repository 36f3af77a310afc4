"""The PNG figures: each one is written as a real PNG where its input is there."""

from __future__ import annotations

from dmf_ray.core.friction import FrictionConfig
from dmf_ray.trainer.plots import plot_schedule


def test_plot_schedule_writes_png(tmp_path):
    cfg = FrictionConfig(schedule="sigmoid", midpoint=0.3)
    path = plot_schedule(cfg, 50, tmp_path / "sub" / "gamma.png")
    assert path.exists()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
