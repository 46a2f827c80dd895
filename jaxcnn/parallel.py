"""Data parallelism with ``jax.sharding``: one mesh axis ``data`` over the devices of every process.

Batches are sharded along ``data``; parameters, optimizer state and BatchNorm statistics are
replicated; the train step stays one ``jax.jit`` function and XLA inserts the collectives (so
BatchNorm averages over the global batch, exactly as on one device). Several processes (hosts)
join through ``jax.distributed``; each holds the (small) dataset and gathers only its rows of
every global batch (``data.batches(..., rows=process_slice(batch_size))``), which
``shard_batch`` assembles into the global array without copying rows between processes.
"""

from __future__ import annotations

import inspect
import os
from numbers import Integral
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"
ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
HEARTBEAT_ENV = "JAXCNN_HEARTBEAT_TIMEOUT"     # seconds; 30 when unset


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, heartbeat_timeout_s: int | None = None) -> bool:
    """Join a multi-process run when one is described, by arguments or by the environment
    variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` (or a
    cluster JAX detects by itself, such as SLURM, with ``num_processes`` given as -1).

    On CPU the cross-process collectives use gloo. A process whose peer stops answering fails
    after about ``heartbeat_timeout_s`` seconds (default ``$JAXCNN_HEARTBEAT_TIMEOUT``, else
    30) instead of waiting forever. Returns whether a distributed runtime was started. Call
    before any other JAX work.
    """
    if heartbeat_timeout_s is None:
        text = os.environ.get(HEARTBEAT_ENV, "30")
        if not (text.isdigit() and int(text) > 0):
            raise ValueError(f"{HEARTBEAT_ENV} must be a positive number of seconds, got "
                             f"{text!r}")
        heartbeat_timeout_s = int(text)
    coordinator = coordinator or os.environ.get(ENV[0])
    if num_processes is None and os.environ.get(ENV[1]):
        num_processes = int(os.environ[ENV[1]])
    if process_id is None and os.environ.get(ENV[2]):
        process_id = int(os.environ[ENV[2]])
    if coordinator is None and num_processes is None and process_id is None:
        return False
    if num_processes == -1:                       # let JAX detect the cluster (e.g. SLURM)
        coordinator = num_processes = process_id = None
    else:
        _check_run(coordinator, num_processes, process_id)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {}
    if "heartbeat_timeout_seconds" in inspect.signature(jax.distributed.initialize).parameters:
        kwargs["heartbeat_timeout_seconds"] = heartbeat_timeout_s
    jax.distributed.initialize(coordinator, num_processes, process_id, **kwargs)
    return True


def _check_run(coordinator: str | None, num_processes: int | None,
               process_id: int | None) -> None:
    """``ValueError`` for a malformed value of a described multi-process run. Values not given
    are left to ``jax.distributed.initialize``, which takes them from a cluster it detects."""
    host, _, port = (coordinator or "").rpartition(":")
    if coordinator is not None and not (host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"--coordinator (or {ENV[0]}) must be HOST:PORT, e.g. 10.0.0.1:1234; "
                         f"got {coordinator!r}")
    if num_processes is not None and not (isinstance(num_processes, Integral)
                                          and num_processes > 0):
        raise ValueError(f"--num-processes (or {ENV[1]}) must be a positive integer, or -1 to "
                         f"let JAX detect the cluster; got {num_processes!r}")
    if process_id is not None and not (isinstance(process_id, Integral) and 0 <= process_id
                                       and (num_processes is None or process_id < num_processes)):
        bound = "" if num_processes is None else f" below --num-processes {num_processes}"
        raise ValueError(f"--process-id (or {ENV[2]}) must be a non-negative integer{bound}; "
                         f"got {process_id!r}")


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh ``("data",)`` over the first ``devices`` local devices of every process
    (default: all of them)."""
    local = jax.local_devices()
    if devices is None:
        devices = len(local)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be a positive integer, got {devices!r}")
    if devices > len(local):
        raise ValueError(f"--devices {devices} asked for, but this process has {len(local)} "
                         f"{local[0].platform} device(s): {', '.join(str(d) for d in local)}")
    by_process: dict[int, list[jax.Device]] = {}
    for device in jax.devices():
        by_process.setdefault(device.process_index, []).append(device)
    chosen = [d for p in sorted(by_process) for d in by_process[p][:devices]]
    return Mesh(np.array(chosen), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"the global batch size {batch_size} must divide evenly over the "
                         f"{mesh.size} devices of the mesh; use a multiple of {mesh.size}")


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array of ``tree`` (the same on all processes) as a replicated global array."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def process_slice(batch_size: int) -> slice:
    """The rows of each global batch this process reads: its contiguous share."""
    share = batch_size // jax.process_count()
    return slice(jax.process_index() * share, (jax.process_index() + 1) * share)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh,
                batch_size: int | None = None) -> dict[str, jax.Array]:
    """A batch as global arrays sharded along their first axis, each process contributing only
    its own rows.

    ``batch`` holds either this process's rows of a global batch of ``batch_size`` (``(R, ...)``
    host arrays, R = batch_size / process count, as ``data.batches(..., rows=process_slice(
    batch_size))`` gives) or the whole global batch (``(B, ...)``, identical on every process;
    its rows for this process are taken here). Without ``batch_size`` it is the whole batch.
    With one process the two are the same.
    """
    sharding = batch_sharding(mesh)
    rows = len(next(iter(batch.values())))
    if batch_size is None or rows == batch_size:
        global_rows, part = rows, process_slice(rows)
    elif rows * jax.process_count() == batch_size:
        global_rows, part = batch_size, slice(None)
    else:
        raise ValueError(f"a batch of {rows} rows is neither the global batch of {batch_size} "
                         f"nor this process's share of it ({batch_size} / "
                         f"{jax.process_count()} processes)")
    return {key: jax.make_array_from_process_local_data(
                sharding, value[part], (global_rows, *value.shape[1:]))
            for key, value in batch.items()}


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated (or single-device) array's value, readable on every process."""
    return np.asarray(x.addressable_data(0))
