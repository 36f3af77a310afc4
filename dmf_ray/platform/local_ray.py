"""A private local Ray runtime for one sweep, on ports no other Ray instance on the machine holds.

Why not ``ray.init(address="local")``: it starts the node's dashboard on 8265 and its dashboard
agent on the fixed port 52365 and cannot be told otherwise. A second local instance on the same
machine (a sweep beside the test suite, two sweeps in two terminals) then runs without a working
agent -- "address already in use" in its logs, nothing on the console -- and Ray Train, which
needs the agent (as it needs ``ray[default]``), waits on worker groups that never start
(``WorkerGroupStartupTimeoutError`` every 60 s, trials RUNNING with no iteration) until the
raylet gives up. That was the 15-minute silent hang of 2026-12-02 (issue 13). Starting the node
through ``ray.cluster_utils.Cluster`` takes the same node parameters ``ray start`` does, so this
instance gets ports the OS hands out free; every instance on the machine gets its own.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import ray
import torch
from ray.cluster_utils import Cluster

OBJECT_STORE_BYTES = 512 * 1024**2  # sweeps move metrics and checkpoint paths, not tensors


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def node_ports() -> dict[str, int]:
    """The two ports a Ray node otherwise takes at fixed numbers, chosen free."""
    return {"dashboard_port": free_port(), "dashboard_agent_listen_port": free_port()}


@contextmanager
def private_local_ray(env_vars: Mapping[str, str], num_cpus: int | None = None, num_gpus: int | None = None,
                      **node_args: Any) -> Iterator[str]:
    """Start a one-node Ray on free ports, connect this driver to it (``env_vars`` for every
    worker), yield its address; disconnect and stop the node on exit, whatever happened."""
    head = {
        "num_cpus": os.cpu_count() if num_cpus is None else num_cpus,
        # Cluster's nodes default to no GPUs; ray.init would have detected them (here: the GPUs
        # this process sees, CUDA_VISIBLE_DEVICES included).
        "num_gpus": torch.cuda.device_count() if num_gpus is None else num_gpus,
        "object_store_memory": OBJECT_STORE_BYTES,
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        **node_ports(),
        **node_args,
    }
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        ray.init(address=cluster.address, runtime_env={"env_vars": dict(env_vars)}, log_to_driver=False)
        try:
            yield cluster.address
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
