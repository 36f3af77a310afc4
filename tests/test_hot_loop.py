"""The trainer's hot loop asks the device nothing between evaluations.

On an accelerator every `.item()`, `bool(tensor)`, `nonzero` or boolean-mask index blocks the
host until the device catches up. These tests record, with a torch dispatch mode, every op
that would force such a synchronisation while training steps run -- on CPU, so they run
everywhere; the ops are the same ones CUDA would have to wait on.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dmf_ray.trainer.config import load_train_config
from dmf_ray.data import load_dataset
from dmf_ray.data.base import BatchSampler
from dmf_ray.trainer.engine import build_state, train, train_step

_SCALAR_READS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select", "aten::equal"}
_MASK_INDEXING = {"aten::index", "aten::index_put", "aten::index_put_"}  # schema names, any overload
# dmf_ray.core.drift_fast's CPU-only paths read counts on the host by design (free there); CUDA
# takes neither (both branch on the device), so their reads are recorded apart.
_CPU_ONLY_PATHS = {"_sparse_floor_forces", "_row_and_column_lse"}


def _is_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (indices or ()))


class SyncRecorder(TorchDispatchMode):
    """Record ops that read a device value on the host, with where they were called.

    Optimiser step counters are host tensors by design (torch.optim keeps them on the CPU
    unless ``capturable``), so reads from inside torch.optim are not device syncs; reads from
    the drift's CPU-only paths go to ``cpu_only``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.cpu_only: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        name = func._schema.name + (f".{func._overloadname}" if func._overloadname != "default" else "")
        forced = func._schema.name in _SCALAR_READS or (func._schema.name in _MASK_INDEXING and _is_bool_index(args))
        if forced:
            stack = traceback.extract_stack()
            if not any("torch/optim/" in frame.filename for frame in stack):
                caller = next((f for f in reversed(stack) if "dmf_ray" in f.filename), stack[-2])
                cpu_only = any(f.name in _CPU_ONLY_PATHS for f in stack)
                (self.cpu_only if cpu_only else self.syncs).append(f"{name} at {caller.filename}:{caller.lineno} in {caller.name}")
        return func(*args, **(kwargs or {}))


CASES = {
    "toy, first order": {},
    "toy, second order": {"friction.order": "second"},
    "toy, hybrid order": {"friction.order": "hybrid"},
    "gaussian-ot residual": {"data.name": "gaussian-ot", "data.dim": 8, "model.kind": "residual"},
    "grad clip, cosine lr": {"optim.grad_clip": 1.0, "optim.lr_schedule": "cosine", "optim.warmup_steps": 2},
    # the released drift as CUDA runs it: dense products (the sparse floor path is CPU-only)
    "reference drift, dense products": {"drift.preset": "reference", "drift.sparse_max_density": 0.0},
}


def _after_one_step(overrides: dict[str, object]) -> tuple:
    """(state, cfg, data) of a small run that has taken its first step (lazy optimiser state)."""
    cfg = load_train_config(None, {"steps": 20, "batch_size": 64, "data.n_train": 400, "data.n_test": 100, **overrides})
    data = load_dataset(cfg.data)
    state = build_state(cfg, data)
    train_step(state, cfg, data)
    return state, cfg, data


@pytest.mark.parametrize("case", list(CASES))
def test_training_steps_force_no_host_device_sync(case: str) -> None:
    state, cfg, data = _after_one_step(CASES[case])
    with SyncRecorder() as recorder:
        for _ in range(3):
            train_step(state, cfg, data)
    assert recorder.syncs == []


def test_the_only_reads_on_cpu_come_from_the_drifts_cpu_only_paths() -> None:
    """On CPU the reference drift counts its above-floor entries and checks its one-exp
    log-sum-exps on the host (free there); CUDA takes neither path, and nothing else in the
    step reads a value."""
    state, cfg, data = _after_one_step({"drift.preset": "reference"})
    with SyncRecorder() as recorder:
        train_step(state, cfg, data)
    assert recorder.syncs == []
    callers = {sync.rsplit(" in ", 1)[1] for sync in recorder.cpu_only}
    assert callers == _CPU_ONLY_PATHS, recorder.cpu_only


def test_recorder_catches_item_and_boolean_masks() -> None:
    """The recorder itself must see the ops it is meant to forbid, or the test above proves nothing."""
    x = torch.arange(6.0)
    with SyncRecorder() as recorder:
        x.sum().item()
        _ = x[x > 2]
    assert len(recorder.syncs) == 2


def test_loop_reads_the_device_only_at_evaluations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over a whole run the loop reads the device twice per evaluation (loss, drift RMS), never per step."""
    import dmf_ray.trainer.engine as engine

    monkeypatch.setattr(engine, "evaluate", lambda *args, **kwargs: {"val_fd": 1.0})  # scoring may sync
    cfg = load_train_config(None, {"steps": 12, "eval_every": 6, "batch_size": 64, "data.n_train": 400,
                                   "data.n_test": 100})
    data = load_dataset(cfg.data)
    with SyncRecorder() as recorder:
        state = train(cfg, data)
    assert state.step == 12 and len(state.history) == 2
    assert len(recorder.syncs) == 4, recorder.syncs
    assert all("engine.py" in s and "_local_scalar_dense" in s for s in recorder.syncs)


def _small_task():
    return load_dataset(load_train_config(None, {"data.n_train": 300, "data.n_test": 50}).data)


def test_indices_come_back_on_the_host_and_index_the_pool() -> None:
    data = _small_task()
    idx, rows = data.source_batch(32, BatchSampler(seed=3), step=0)
    assert idx.device.type == "cpu"
    assert torch.equal(rows, data.train_source[idx])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: pools on the device")
def test_batches_are_the_same_with_pools_on_the_host_or_the_device() -> None:
    """The sampler draws the indices on the host, so a seed gives the same batch whatever the pools' device."""
    data = _small_task()
    idx_cpu, rows_cpu = data.source_batch(32, BatchSampler(seed=3), step=0)
    on_cuda = data.with_train_pools_on("cuda")
    assert on_cuda.train_source.device.type == "cuda"
    idx_cuda, rows_cuda = on_cuda.source_batch(32, BatchSampler(seed=3), step=0)
    assert idx_cuda.device.type == "cpu" and rows_cuda.device.type == "cuda"
    assert torch.equal(idx_cpu, idx_cuda) and torch.equal(rows_cpu, rows_cuda.cpu())
