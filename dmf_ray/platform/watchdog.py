"""Bounded waits for a sweep: trials that can never be placed, and sweeps that stopped moving.

Tune waits for resources forever by design (an autoscaler may add nodes), so a trial that asks
for more than a fixed cluster has, or a sweep whose workers never start, sits RUNNING or PENDING
with nothing on the console. Two checks end that with one line each:

* :func:`placement_problem` before any trial starts: a trial's request (workers x CPUs / GPUs)
  against the cluster's totals, on clusters that cannot grow;
* :class:`NoProgressStopper` while the sweep runs: no trial reported a result for
  ``limit_s`` seconds -> Tune stops every trial and the sweep says why.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

from ray import tune

from dmf_ray.platform.search_space import ResourceSpec

DEFAULT_NO_PROGRESS_S = 1800.0  # longer than any evaluation interval we run; configurable per sweep


def trial_request(resources: ResourceSpec) -> dict[str, float]:
    """What one trial reserves in all: its workers' CPUs and GPUs (the Tune function's share is
    negligible)."""
    return {"CPU": resources.workers * resources.cpus_per_worker, "GPU": resources.workers * resources.gpus_per_worker}


def placement_problem(resources: ResourceSpec, cluster: Mapping[str, float],
                      node_capacity: list[Mapping[str, float]] | None = None) -> str:
    """Why a trial can never be placed on ``cluster`` (``ray.cluster_resources()``), or "".

    Each worker needs its CPUs and GPUs on one node, so with ``node_capacity`` (each alive node's
    resources) a worker larger than every node is refused too."""
    asked = trial_request(resources)
    have = {kind: float(cluster.get(kind, 0.0)) for kind in asked}
    what = (f"a trial asks for {resources.workers} worker(s) x {resources.cpus_per_worker:g} CPU"
            f" + {resources.gpus_per_worker:g} GPU = {asked['CPU']:g} CPU, {asked['GPU']:g} GPU")
    if any(asked[kind] > have[kind] + 1e-9 for kind in asked):
        return f"{what}; the cluster has {have['CPU']:g} CPU, {have['GPU']:g} GPU in all"
    worker = {"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker}
    nodes = node_capacity or []
    if nodes and not any(all(worker[k] <= float(n.get(k, 0.0)) + 1e-9 for k in worker) for n in nodes):
        largest = max(nodes, key=lambda n: (float(n.get("GPU", 0.0)), float(n.get("CPU", 0.0))))
        return (f"{what}; no node fits one worker (the largest has {float(largest.get('CPU', 0.0)):g} CPU,"
                f" {float(largest.get('GPU', 0.0)):g} GPU)")
    return ""


class NoProgressStopper(tune.Stopper):
    """Stop the whole sweep once no trial has reported for ``limit_s`` seconds.

    Tune calls ``stop_all`` on every step of its loop, so the bound holds even when no trial ever
    reports (workers that are never placed). ``reason`` says what happened once it fired.
    """

    def __init__(self, limit_s: float = DEFAULT_NO_PROGRESS_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s = limit_s
        self._clock = clock
        self._last: float | None = None
        self.reason = ""

    def __call__(self, trial_id: str, result: dict) -> bool:
        self._last = self._clock()
        return False

    def stop_all(self) -> bool:
        now = self._clock()
        if self._last is None:
            self._last = now  # the sweep's first step
        if not self.reason and now - self._last > self.limit_s:
            self.reason = (f"no trial reported a result for {self.limit_s:g} s: stopped the sweep (workers not placed,"
                           " or a trial stuck; see the trial logs in the sweep folder)")
        return bool(self.reason)
