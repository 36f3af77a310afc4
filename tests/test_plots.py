"""The PNG figures: each one is written as a real PNG where its input is there."""

from __future__ import annotations

from dmf_ray.core.friction import FrictionConfig
from dmf_ray.trainer.plots import plot_schedule


def test_plot_schedule_writes_png(tmp_path):
    cfg = FrictionConfig(schedule="sigmoid", midpoint=0.3)
    path = plot_schedule(cfg, 50, tmp_path / "sub" / "gamma.png")
    assert path.exists()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_schedule_of_a_learned_table_writes_png(tmp_path):
    # a learned table's title names its knots: long, wrapped to the figure's width
    cfg = FrictionConfig(schedule="table", breakpoints=(0.1, 0.2, 0.3, 0.5, 0.7, 0.9), levels=(0.1, 0.2, 0.3, 0.5, 0.7, 0.9))
    path = plot_schedule(cfg, 1000, tmp_path / "table.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
