"""A sweep's private Ray works beside another local Ray instance that holds the default ports.

The squatter is a real ``ray.init(address="local")`` in another process (dashboard 8265, agent
52365); the private instance must still start a Ray Train worker group and finish a fit, which is
what hung for 15 minutes when a sweep ran beside the test suite (dmf_ray/platform/local_ray.py).
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray

from dmf_ray.platform.local_ray import free_port, private_local_ray

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
DEFAULT_AGENT_PORT = 52365
READY_WAIT_S = 180.0

SQUATTER = """
import sys, ray
ray.init(address="local", include_dashboard=True, num_cpus=1, log_to_driver=False)
print("ready", flush=True)
sys.stdin.read()  # hold the ports until the test closes stdin
"""


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def squatter(tmp_path):
    """Another local Ray instance, started from its own temp dir, until the test ends."""
    # A short temp dir: Ray's unix socket paths must fit in 107 bytes.
    other_tmp = tempfile.mkdtemp(prefix="rayq")
    log = tmp_path / "other_ray.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", SQUATTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, env={**os.environ, "RAY_TMPDIR": other_tmp}, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], READY_WAIT_S)
        assert ready and proc.stdout.readline().strip() == "ready", f"the other Ray instance did not start: {log.read_text()[-2000:]}"
        yield proc
    finally:
        proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(other_tmp, ignore_errors=True)


def _one_report(config: dict) -> None:
    """The worker proves it ran: it writes its rank and the value it was given."""
    rank = ray.train.get_context().get_world_rank()
    (Path(config["out"]) / f"rank{rank}.txt").write_text(str(config["value"]))


def test_free_ports_are_free() -> None:
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))  # would raise if something held it


def test_a_train_fit_finishes_beside_an_instance_on_the_default_ports(squatter, tmp_path) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    assert _listening(DEFAULT_AGENT_PORT), "the other instance should hold the agent's default port"
    with private_local_ray({}, num_cpus=2) as address:
        assert address and ray.is_initialized()
        node = ray.nodes()[0]
        # The agent bound a port of its own (a plain ray.init(address="local") here reports -1:
        # its agent could not bind 52365, and Train then leaks stopped trials' reservations).
        agent_port = node["DashboardAgentListenPort"]
        assert node["Alive"] and agent_port > 0 and agent_port != DEFAULT_AGENT_PORT and _listening(agent_port)
        trainer = TorchTrainer(_one_report, train_loop_config={"value": 7, "out": str(tmp_path)},
                               scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                               run_config=RunConfig(storage_path=str(tmp_path / "store"), name="fit"))
        result = trainer.fit()
        assert result.error is None and (tmp_path / "rank0.txt").read_text() == "7"
    assert not ray.is_initialized()


def test_a_sweep_finishes_beside_an_instance_on_the_default_ports(squatter, tmp_path) -> None:
    """The issue-13 hang: a sweep started while another local Ray holds 8265 / 52365."""
    import yaml

    from dmf_ray.tune import run as tune_run
    from test_sweep import TINY_SPACE

    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({**TINY_SPACE, "num_samples": 2}, sort_keys=False))
    out = tune_run(["--space", str(space), "--storage-path", str(tmp_path / "store"), "--name", "beside"])
    assert len(out.trials) == 2 and out.registered is not None and out.registered.result.became_champion
    assert (tmp_path / "store" / "mlflow.db").is_file() and not out.stopped
