"""Where a batch runs: the default device, or several devices, data-parallel or by rows."""

from __future__ import annotations

import warnings

import jax
import numpy as np


class Placement:
    """The default device, or `devices` (a 1-D Mesh, weights replicated), either data-parallel
    (every batched array split along its image axis; a batch is padded to a multiple of the
    device count by repeating its last image) or, with spatial=True, each image's rows split
    over the devices (image-sized arrays split along H, the rest replicated; XLA's SPMD
    partitioner adds the halo exchanges and the gathers the FFTs need; a scale whose padded
    height the device count does not divide runs whole on every device, with a warning)."""

    def __init__(self, devices=None, spatial: bool = False):
        self.devices = list(devices) if devices is not None else []
        self.spatial = spatial and len(self.devices) > 1
        if len(self.devices) > 1:
            mesh = jax.sharding.Mesh(np.asarray(self.devices), ("split",))
            spec = jax.sharding.PartitionSpec(None, "split") if self.spatial else jax.sharding.PartitionSpec("split")
            self._split = jax.sharding.NamedSharding(mesh, spec)
            self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        elif self.devices:
            self._split = self._replicated = jax.sharding.SingleDeviceSharding(self.devices[0])

    def batch_size(self, batch: int) -> int:
        """`batch` rounded up to a multiple of the device count (data-parallel; else itself)."""
        n = 1 if self.spatial else max(len(self.devices), 1)
        return batch + -batch % n

    def pad_batch(self, x: np.ndarray) -> np.ndarray:
        """x (B, ...) on the host with its last image repeated up to `batch_size(B)` images."""
        extra = self.batch_size(x.shape[0]) - x.shape[0]
        return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x

    def weights(self, state):
        """The model state, replicated over the devices."""
        return jax.device_put(state, self._replicated) if self.devices else state

    def batched(self, arrays):
        """A pytree of batched arrays (leading image axis, `batch_size` images), placed (on the
        device already: a move between devices)."""
        if not self.devices:
            return arrays
        if not self.spatial:
            return jax.tree.map(lambda x: jax.device_put(x, self._split), arrays)
        n = len(self.devices)
        height = jax.tree.leaves(arrays)[0].shape[1]
        if height % n:
            warnings.warn(f"spatial split: the padded height {height} is not a multiple of the {n} devices, so "
                          "this scale runs whole on every device", stacklevel=3)
        # images and masks (B, H, W, C) by rows; matrices and references whole
        return jax.tree.map(lambda x: jax.device_put(x, self._split if x.ndim == 4 and x.shape[1] % n == 0
                                                     else self._replicated), arrays)
