"""Data parallelism on a device mesh, on one host or many (`jax.distributed`).

`config.parallel.devices` selects the mesh: 1 (the default) runs on one device with no mesh; n > 1
puts the first n devices on a 1-D mesh whose axis is `data`; 0 takes every device of every
process. On a mesh the training steps and the unlearning epochs are jitted with

- the parameters, optimiser state and the (small, in-memory) datasets replicated on every device;
- the (steps, batch) index arrays of a block sharded on the batch axis, so each device gathers,
  forwards and differentiates its share of every global batch (`NamedSharding(mesh, P(None,
  "data"))`); XLA all-reduces the gradients and the BatchNorm batch statistics, so one global
  batch gives the same update as on one device (to float rounding);
- the state donated, and every output replicated.

Multi-host: every process runs the same program on the same data (the datasets are loaded and
the batch order derived from the seed in every process). Each process builds the index shards of
its own devices only (`jax.make_array_from_callback`), i.e. feeds its share of the global batch;
process 0 writes the results files; Orbax writes the checkpoints collectively.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from scu_jax.errors import ConfigError

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Where a run's arrays live: one device (`mesh is None`) or a 1-D `data` mesh.

    Attributes:
      mesh: the 1-D mesh over the `data` axis, or None for one device. `size`, `replicate`,
        `jit` and the batch shardings follow from it.

    Example:
      >>> scu_jax.DataParallel().size, scu_jax.mesh_for(1).mesh is None
      (1, True)
    """

    mesh: jax.sharding.Mesh | None = None

    @property
    def size(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    @property
    def replicated(self) -> NamedSharding | None:
        return None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())

    def jit(self, fun, **kwargs):
        """`jax.jit`, with every output replicated on the mesh."""
        if self.mesh is not None:
            kwargs["out_shardings"] = self.replicated
        return jax.jit(fun, **kwargs)

    def replicate(self, tree: Any) -> Any:
        """Puts a pytree (host or device arrays) on every device of the mesh."""
        if self.mesh is None:
            return tree
        if jax.process_count() > 1:
            # A local device array cannot be placed on other processes' devices: via the host.
            tree = jax.device_get(tree)
        return jax.device_put(tree, self.replicated)

    def shard_batches(self, indices: np.ndarray, batch_axis: int = 1) -> Any:
        """A host (steps, batch, ...) index array (or (epochs, steps, batch, ...) with
        `batch_axis=2`) sharded on its batch axis.

        Each process builds only the shards of its own devices (its share of every batch).
        """
        if self.mesh is None:
            return indices
        sharding = NamedSharding(self.mesh, PartitionSpec(*(None,) * batch_axis, DATA_AXIS))
        return jax.make_array_from_callback(indices.shape, sharding, lambda index: indices[index])

    def constrain(self, tree: Any) -> Any:
        """Inside jit: keeps a gathered batch sharded on its leading (batch) axis."""
        if self.mesh is None:
            return tree
        sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)

    def check_batch(self, batch_size: int, field: str) -> None:
        """Raises `ConfigError` unless a global batch splits evenly over the mesh."""
        if batch_size % self.size:
            raise ConfigError(f"config.{field}={batch_size}: a batch must split evenly over the "
                              f"{self.size} devices of config.parallel.devices")


def mesh_for(devices: int, batch_sizes: Mapping[str, int] = {}) -> DataParallel:  # noqa: B006
    """The mesh of `devices` devices (see the module docstring).

    Args:
      devices: 1 is one device and no mesh, n > 1 the first n devices, 0 every device of every
        process.
      batch_sizes: `{config field: global batch size}`, each of which must split evenly.

    Raises:
      ConfigError: more devices than there are, a multi-process run not on every device, or a
        batch that does not split evenly over the devices.

    Returns:
      A `DataParallel`.

    Example:
      >>> parallel = scu_jax.mesh_for(0, {"train.batch_size": 16})   # every device here
      >>> parallel.size == jax.device_count()
      True
    """
    available = jax.device_count()
    processes = jax.process_count()
    if devices == 1 and processes == 1:
        return DataParallel()
    count = available if devices == 0 else devices
    if count > available:
        raise ConfigError(f"config.parallel.devices={devices}: only {available} "
                          f"{jax.default_backend()} device(s) are visible")
    if processes > 1 and count != available:
        raise ConfigError(f"config.parallel.devices={devices}: a run over {processes} processes "
                          f"uses all {available} devices; set config.parallel.devices=0")
    mesh = jax.make_mesh((count,), (DATA_AXIS,), (jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:count])
    parallel = DataParallel(mesh)
    for field, batch_size in batch_sizes.items():
        parallel.check_batch(batch_size, field)
    return parallel


def is_primary() -> bool:
    """Whether this process writes the run's result files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches this point (a no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None, devices: int = 0) -> None:
    """Joins a multi-process run (`jax.distributed.initialize`) when the flags ask for one.

    All three values unset: a single-process run, nothing to do. Must run before any JAX
    computation. `devices` is the run's `config.parallel.devices`, which must be 0 (every device)
    for more than one process.

    Raises:
      ValueError: an incomplete or inconsistent set of values (one line).
    """
    given = [value is not None for value in (coordinator_address, num_processes, process_id)]
    if not any(given):
        return
    if not all(given):
        raise ValueError("--coordinator_address, --num_processes and --process_id go together: "
                         "give all three or none")
    if num_processes < 1:
        raise ValueError(f"--num_processes={num_processes}: must be >= 1")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id}: must be in [0, {num_processes})")
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator_address={coordinator_address!r}: must be HOST:PORT")
    if num_processes > 1 and devices != 0:
        raise ValueError(f"--num_processes={num_processes}: a multi-process run spans every "
                         "device; add --config.parallel.devices=0")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id)
