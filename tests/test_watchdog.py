"""Bounded waits: infeasible trials are refused before they start, and a sweep in which no trial
reports stops with a reason (real Tune for the stopper; the clock is faked only in unit tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray
from ray import tune

from dmf_ray.platform.search_space import ResourceSpec
from dmf_ray.platform.watchdog import NoProgressStopper, placement_problem, trial_request

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/


def test_trial_request_is_workers_times_per_worker() -> None:
    assert trial_request(ResourceSpec(workers=3, cpus_per_worker=0.5, gpus_per_worker=1)) == {"CPU": 1.5, "GPU": 3}


@pytest.mark.parametrize(("resources", "cluster", "nodes", "expected"), [
    (ResourceSpec(workers=2, cpus_per_worker=1), {"CPU": 2.0}, None, ""),
    (ResourceSpec(workers=1, cpus_per_worker=4), {"CPU": 2.0}, None,
     "a trial asks for 1 worker(s) x 4 CPU + 0 GPU = 4 CPU, 0 GPU; the cluster has 2 CPU, 0 GPU in all"),
    (ResourceSpec(workers=1, cpus_per_worker=1, gpus_per_worker=1), {"CPU": 16.0}, None,
     "a trial asks for 1 worker(s) x 1 CPU + 1 GPU = 1 CPU, 1 GPU; the cluster has 16 CPU, 0 GPU in all"),
    (ResourceSpec(workers=1, cpus_per_worker=3), {"CPU": 4.0}, [{"CPU": 2.0}, {"CPU": 2.0}],
     "a trial asks for 1 worker(s) x 3 CPU + 0 GPU = 3 CPU, 0 GPU; no node fits one worker (the largest has 2 CPU, 0 GPU)"),
])
def test_placement_problem_names_the_request_and_the_cluster(resources, cluster, nodes, expected) -> None:
    assert placement_problem(resources, cluster, nodes) == expected


def test_stopper_fires_only_after_the_limit_without_results() -> None:
    now = [0.0]
    stopper = NoProgressStopper(limit_s=10.0, clock=lambda: now[0])
    assert not stopper.stop_all()
    now[0] = 9.0
    assert not stopper.stop_all()
    assert stopper("t1", {"step": 1}) is False  # a result resets the clock
    now[0] = 18.0
    assert not stopper.stop_all()
    now[0] = 19.5
    assert stopper.stop_all() and "no trial reported a result for 10 s" in stopper.reason
    assert stopper.stop_all()  # stays fired


def _never_reports(config: dict) -> None:
    """A trial whose work never produces a result (its wait ends only when the test's folder
    gets a release file, which the test never writes; bounded at 300 s)."""
    import time

    release = Path(config["release"])
    deadline = time.monotonic() + 300
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.mark.slow
def test_a_sweep_with_no_results_stops_with_a_reason(tmp_path: Path) -> None:
    stopper = NoProgressStopper(limit_s=5.0)
    ray.init(address="local", num_cpus=1, log_to_driver=False)
    try:
        tuner = tune.Tuner(_never_reports, param_space={"release": str(tmp_path / "release")},
                           run_config=tune.RunConfig(storage_path=str(tmp_path / "store"), name="stuck", stop=stopper,
                                                     verbose=0))
        grid = tuner.fit()
    finally:
        ray.shutdown()
    assert "no trial reported a result for 5 s" in stopper.reason
    assert not (tmp_path / "release").exists() and len(grid) == 1
