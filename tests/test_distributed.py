"""Ray Train data parallelism: 2 CPU workers compute the single-process drift and step."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")
import ray.cloudpickle  # noqa: E402
import ray.train  # noqa: E402
import ray.train.torch  # noqa: E402
from ray.train import ScalingConfig  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402

from dmf_ray.trainer.checkpoint import read_checkpoint  # noqa: E402
from dmf_ray.trainer.config import load_train_config  # noqa: E402
from dmf_ray.data import load_dataset  # noqa: E402
from dmf_ray.platform.distributed import CHECKPOINT_FILE, GENERATOR_FILE, all_gather_rows, worker_loop  # noqa: E402
from dmf_ray.core.drift import drift_field  # noqa: E402
from dmf_ray.trainer.engine import build_state, train_step  # noqa: E402

pytestmark = pytest.mark.slow

# Workers cannot import this test module; ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

OVERRIDES = {"steps": 4, "eval_every": 2, "batch_size": 32, "eval_samples": 200, "data.n_train": 1000,
             "data.n_test": 200, "model.width": 16, "model.depth": 2, "drift.preset": "reference"}


def _probe_one_step(config: dict) -> None:
    """Worker: one engine step with the all-gather hook; rank 0 reports global drift and weights."""
    cfg = load_train_config(None, config["overrides"])
    data = load_dataset(cfg.data)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    state = build_state(cfg, data, rank=rank, world=ctx.get_world_size())
    state.model = ray.train.torch.prepare_model(state.model)
    stats = train_step(state, cfg, data, gather=all_gather_rows)
    drift_all, _ = all_gather_rows(stats.drift)  # this rank computed only its own rows
    weights = torch.cat([p.detach().flatten() for p in state.model.module.parameters()])
    if rank != 0:
        ray.train.report({})
        return
    with tempfile.TemporaryDirectory() as folder:  # Train V2 attaches metrics to checkpoints
        Path(folder, "probe.txt").write_text("step 1")
        ray.train.report({"drift": drift_all.tolist(), "weights": weights.tolist()},
                         checkpoint=ray.train.Checkpoint.from_directory(folder))


def _single_process_reference(overrides: dict, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same step in one process on the concatenated per-rank batches."""
    cfg = load_train_config(None, overrides)
    data = load_dataset(cfg.data)
    sources, positives = [], []
    for rank in range(workers):
        sampler = build_state(cfg, data, rank=rank, world=workers).sampler
        sources.append(data.source_batch(cfg.batch_size, sampler, 0)[1])
        positives.append(data.target_batch(cfg.batch_size, sampler, 0)[1])
    state = build_state(cfg, data)
    x = state.model(torch.cat(sources))
    result = drift_field(x.detach(), torch.cat(positives), None, cfg.drift)
    loss = ((x - (x.detach() + result.drift)) / result.scale).square().mean()
    state.optimizer.zero_grad()
    loss.backward()
    state.optimizer.step()
    return result.drift, torch.cat([p.detach().flatten() for p in state.model.parameters()])


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    ray.init(address="local", num_cpus=2,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    yield
    ray.shutdown()


def test_two_workers_match_single_process_drift_and_step(ray_session, tmp_path) -> None:
    trainer = TorchTrainer(
        _probe_one_step,
        train_loop_config={"overrides": OVERRIDES},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path), name="probe"),
    )
    metrics = trainer.fit().metrics
    drift_ref, weights_ref = _single_process_reference(OVERRIDES, workers=2)
    drift = torch.tensor(metrics["drift"])
    assert drift.shape == (2 * OVERRIDES["batch_size"], 2)
    assert torch.allclose(drift, drift_ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(torch.tensor(metrics["weights"]), weights_ref, atol=1e-6)


def test_worker_loop_reports_metrics_with_safetensors_checkpoints(ray_session, tmp_path) -> None:
    cfg = load_train_config(None, OVERRIDES)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"train": cfg},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path), name="loop"),
    )
    result = trainer.fit()
    assert result.metrics["step"] == 4 and result.metrics["val_fd"] > 0
    with result.checkpoint.as_directory() as folder:
        tensors, meta = read_checkpoint(Path(folder) / CHECKPOINT_FILE)
        assert meta["step"] == 4 and (Path(folder) / GENERATOR_FILE).is_file()

    # Resuming from the step-2 checkpoint reproduces the uninterrupted run's final metrics.
    step2 = next(ckpt for ckpt, metrics in result.best_checkpoints if metrics["step"] == 2)
    resumed = TorchTrainer(
        worker_loop,
        train_loop_config={"train": cfg, "resume_from": step2.path},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path), name="loop-resumed"),
    ).fit()
    assert resumed.metrics["step"] == 4
    assert resumed.metrics["val_fd"] == pytest.approx(result.metrics["val_fd"], rel=1e-5)
    assert resumed.metrics["loss"] == pytest.approx(result.metrics["loss"], rel=1e-5)
