"""Offline checks of the Ray cluster-launcher configs in clusters/ and of clusters/README.md.

Each YAML goes through the same two steps `ray up` runs before it touches a cloud API:
``prepare_config`` (merge with the provider's bundled defaults.yaml, fold setup commands,
check docker, fill per-type min/max workers; for provider "local" also build the single
internal node type from head_ip / worker_ips) and ``validate_config`` (jsonschema of
ray/autoscaler/ray-schema.json plus Ray's head-type / min-workers checks). Not run: the
provider's ``fillout_available_node_types_resources`` (AWS: describe-instance-types) and
``bootstrap_config`` (IAM, key pairs, subnets, security groups), which need cloud credentials.
Sockets are blocked for the whole module, so nothing here can reach the network.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import shlex
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
EXPECTED = {"gpu.yaml": "aws", "gcp-gpu.yaml": "gcp", "local.yaml": "local"}
CLOUD = ["gpu.yaml", "gcp-gpu.yaml"]
STORAGE = {
    "gpu.yaml": ["s3://YOUR-BUCKET/dmf_ray"],
    "gcp-gpu.yaml": ["gs://YOUR-BUCKET/dmf_ray"],
    "local.yaml": ["/mnt/shared/dmf_ray", "--shared-storage"],
}
DOC_NET = ipaddress.ip_network("192.0.2.0/24")  # TEST-NET-1 (RFC 5737)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cluster config tests must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTERS / name).read_text())


def offline_validate(config: dict) -> dict:
    """What `ray up` checks before its first cloud call; returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def worker_types(cfg: dict) -> dict:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


# ------------------------------------------------------------------ every file passes Ray's check

def test_cluster_files_are_the_documented_three():
    assert {p.name for p in CLUSTERS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(p.name for p in CLUSTERS.glob("*.yaml")))
def test_config_passes_ray_offline_validation(name):
    raw = load(name)
    assert raw["provider"]["type"] == EXPECTED[name]
    prepared = offline_validate(raw)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    for node_type in prepared["available_node_types"].values():
        assert isinstance(node_type["resources"], dict)


# ------------------------------------------------------------------ broken files are caught

def _typo_top(old: str, new: str):
    def mutate(cfg):
        cfg[new] = cfg.pop(old)
        return cfg
    return mutate


def _typo_in(section: str, old: str, new: str):
    def mutate(cfg):
        cfg[section][new] = cfg[section].pop(old)
        return cfg
    return mutate


def _typo_in_worker(old: str, new: str):
    def mutate(cfg):
        wt = cfg["available_node_types"]["ray.worker.gpu"]
        wt[new] = wt.pop(old)
        return cfg
    return mutate


def _worker_without_resources(cfg):
    del cfg["available_node_types"]["ray.worker.gpu"]["resources"]
    return cfg


def _fractional_gpu(cfg):
    cfg["available_node_types"]["ray.worker.gpu"]["resources"]["GPU"] = 0.5
    return cfg


V = jsonschema.ValidationError
BROKEN = {  # case -> (mutation of gpu.yaml, exception, text the message must contain)
    "max_workerz": (_typo_top("max_workers", "max_workerz"), V, "max_workerz"),
    "head_node_typ": (_typo_top("head_node_type", "head_node_typ"), V, "head_node_typ"),
    "setup_comands": (_typo_top("setup_commands", "setup_comands"), V, "setup_comands"),
    "docker.run_optionz": (_typo_in("docker", "run_options", "run_optionz"), V, "run_optionz"),
    # a misspelled docker image key leaves a container without an image: Ray's docker check
    # (inside prepare_config, before the schema) asserts
    "docker.imag": (_typo_in("docker", "image", "imag"), AssertionError, "container & image"),
    "auth.ssh_usr": (_typo_in("auth", "ssh_user", "ssh_usr"), V, "ssh_usr"),
    "node type min_workerz": (_typo_in_worker("min_workers", "min_workerz"), V, "min_workerz"),
    "node type without resources": (_worker_without_resources, V, "'resources' is a required property"),
    "fractional resource": (_fractional_gpu, V, "0.5"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_copy_of_gpu_yaml_is_rejected(case):
    mutate, exc, needle = BROKEN[case]
    with pytest.raises(exc) as err:
        offline_validate(mutate(load("gpu.yaml")))
    assert needle in str(err.value)


def test_unknown_head_node_type_is_rejected():
    cfg = load("gpu.yaml")
    cfg["head_node_type"] = "ray.head.missing"
    with pytest.raises(ValueError, match="head_node_type"):
        offline_validate(cfg)


def test_min_workers_above_max_workers_is_rejected():
    cfg = load("gcp-gpu.yaml")
    worker_types(cfg)["ray_worker_gpu"]["min_workers"] = cfg["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        offline_validate(cfg)


def test_local_provider_refuses_node_types():
    cfg = load("local.yaml")
    cfg["available_node_types"] = load("gpu.yaml")["available_node_types"]
    with pytest.raises(Exception, match="not supported for on-premise"):
        offline_validate(cfg)


# ------------------------------------------------------------------ the promised structure

@pytest.mark.parametrize("name", CLOUD)
def test_cloud_config_has_cpu_head_and_autoscaling_gpu_workers(name):
    cfg = offline_validate(load(name))
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] >= 1
    assert head["max_workers"] == 0
    workers = worker_types(cfg)
    assert len(workers) == 1
    (worker,) = workers.values()
    assert worker["resources"]["GPU"] >= 1 and worker["resources"]["CPU"] >= 1
    assert worker["min_workers"] == 0
    assert 1 <= worker["max_workers"] <= cfg["max_workers"]


@pytest.mark.parametrize("name", CLOUD)
def test_cloud_config_runs_the_matching_ray_gpu_image(name):
    docker = load(name)["docker"]
    image = docker["image"]
    assert image.startswith("rayproject/ray:") and image.endswith("-gpu")
    assert f":{ray.__version__}-py311-" in image, "image Ray version must match the installed Ray"
    assert docker["container_name"]


def test_aws_workers_get_an_instance_profile_for_s3():
    worker = worker_types(load("gpu.yaml"))["ray.worker.gpu"]
    assert worker["node_config"]["InstanceType"].startswith("g5.")
    assert "instance-profile/" in worker["node_config"]["IamInstanceProfile"]["Arn"]


def test_gcp_workers_get_a_gpu_and_a_service_account():
    cfg = load("gcp-gpu.yaml")
    assert cfg["provider"]["project_id"] == "YOUR-PROJECT-ID"
    assert cfg["provider"]["availability_zone"].startswith(cfg["provider"]["region"])
    node = worker_types(cfg)["ray_worker_gpu"]["node_config"]
    (acc,) = node["guestAccelerators"]
    assert acc["acceleratorType"].startswith("nvidia-") and acc["acceleratorCount"] == 1
    assert {"onHostMaintenance": "TERMINATE"} in node["scheduling"]
    assert node["serviceAccounts"][0]["email"].endswith("@YOUR-PROJECT-ID.iam.gserviceaccount.com")
    head = cfg["available_node_types"][cfg["head_node_type"]]["node_config"]
    assert head["machineType"] == "n1-standard-8"


def test_local_config_uses_documentation_ips():
    cfg = load("local.yaml")
    assert "available_node_types" not in cfg  # the local provider builds its own
    ips = [cfg["provider"]["head_ip"], *cfg["provider"]["worker_ips"]]
    assert len(set(ips)) == len(ips) >= 2
    assert all(ipaddress.ip_address(ip) in DOC_NET for ip in ips)
    assert cfg["auth"]["ssh_user"] and cfg["auth"]["ssh_private_key"]
    prepared = offline_validate(cfg)
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(cfg["provider"]["worker_ips"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_repo_is_synced_and_installed_on_every_node(name):
    cfg = offline_validate(load(name))
    assert cfg["file_mounts"] == {"~/dmf_ray": "."}
    assert ".gitignore" in cfg["rsync_filter"]
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands folded in
        assert "pip install -q -e ~/dmf_ray" in cfg[key]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_storage_placeholder_is_documented(name):
    text = (CLUSTERS / name).read_text()
    for needle in STORAGE[name]:
        assert needle in text


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_binds_loopback_only(name):
    cfg = offline_validate(load(name))
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    everything = (CLUSTERS / name).read_text()
    assert "0.0.0.0" not in everything  # neither the dashboard nor MLflow listens publicly
    assert "--head" in head_start and "$RAY_HEAD_IP:6379" in " ".join(cfg["worker_start_ray_commands"])


# ------------------------------------------------------------------ README commands are exact

README = CLUSTERS / "README.md"


def _code_commands(prefix: str) -> list[list[str]]:
    """Indented code lines of clusters/README.md (continuations joined) that run ``prefix``."""
    text = re.sub(r"\\\n\s*", " ", README.read_text())
    out = []
    for line in text.splitlines():
        if line.startswith("    ") and prefix in line:
            out.append(shlex.split(line.split(prefix, 1)[1], comments=True))
    return out


def test_readme_tune_commands_use_real_flags():
    from dmf_ray.tune import build_parser

    commands = _code_commands("python -m dmf_ray.tune")
    assert len(commands) >= 2
    for argv in commands:
        args = build_parser().parse_args(argv)  # UserInputError on an unknown flag
        assert args.address == "auto" and args.tracking_uri == "http://127.0.0.1:5000"
        assert "://" in args.storage_path or args.shared_storage


def test_readme_infer_command_uses_real_flags():
    from dmf_ray.infer import build_parser

    (argv,) = _code_commands("python -m dmf_ray.infer")
    build_parser().parse_args(argv)


def test_readme_ray_commands_name_existing_configs_and_loopback():
    text = README.read_text()
    for path in re.findall(r"ray (?:up|down|exec|attach|dashboard|rsync-down) (\S+\.yaml)", text):
        assert (ROOT / path).is_file(), path
    for cmd in re.findall(r"mlflow server [^'\n]*", text):
        assert "--host 127.0.0.1" in cmd and "--workers 1" in cmd
    code = [line for line in text.splitlines() if line.startswith("    ")]
    assert code and not any("0.0.0.0" in line for line in code)
