"""``LoRunModel.restore``: the validated inference entry point, whole or in tiles.

A mixin of :class:`~lorun_peft.unfolding.LoRunModel`: it checks the measurement, runs in eval mode under
``torch.inference_mode`` with the stage adapters materialised, optionally in bf16 autocast or in tiles of
bounded memory (:mod:`.tiling`), and puts the model's modes back afterwards.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lorun_peft.tuners import get_merge_mode, set_merge_mode

from .inputs import _check_autocast_dtype, _check_image_size, _crop, _validated_measurement
from .tiling import restore_in_tiles, tile_cells

__all__ = ["RestoreMixin"]


class RestoreMixin:
    """``restore(measurement, image_size=None, *, tile_size=..., tile_overlap=..., autocast_dtype=...)``."""

    def restore(
        self,
        measurement: Tensor,
        image_size: tuple[int, int] | None = None,
        *,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Restore images from measurements: the user entry point.

        Accepts one measurement or a batch (layout: the active physics' ``check_measurement``), checks
        shape, dtype and finiteness, runs in eval mode under ``torch.inference_mode`` (no graph, no
        stage outputs kept: memory is one stage's activations), in lorun mode with the K per-stage
        weights materialised (the fastest merge mode), and puts back the previous train/eval and merge
        modes afterwards. Returns ``(B, C, H, W)``, or ``(C, H, W)`` for a single measurement, on the
        measurement's device and dtype.

        ``tile_size``: restore in windows of about this many image pixels a side (rounded down to whole
        measurement cells: blocks of block CS, low-resolution pixels of SR), each with a halo of
        ``tile_overlap`` pixels (default: a quarter of the tile) that is computed and dropped, so peak
        memory is that of one window (docs/inference.md). Only operators whose ``grid_factor`` is set
        act locally enough for this (block CS, SR); others raise ``ValueError``.

        ``autocast_dtype=torch.bfloat16`` (opt-in): run the denoisers under ``torch.autocast`` in bf16, the
        physics staying fp32; refused where the device does not compute bf16 natively (CPUs without
        AVX512-BF16/AMX emulate it far slower than fp32). Its accuracy cost is measured in
        docs/inference.md.

        ``image_size=(H, W)``: the size of the original image(s). A block-CS measurement does not record
        it: images whose sides are not multiples of the block were zero-padded, and without
        ``image_size`` the estimate of the padded grid ``(ceil(H/b)*b, ceil(W/b)*b)`` is returned (crop
        it yourself, or pass ``image_size``). A size that cannot have produced the measurement raises
        ``ValueError``. Other physics determine the size from the measurement.
        """
        y, batched = _validated_measurement(self.physics, measurement)
        tiles = None if tile_size is None else tile_cells(self.physics, tile_size, tile_overlap)
        reference = next(self.parameters())
        _check_autocast_dtype(autocast_dtype, reference.device)
        y = y.to(device=reference.device, dtype=reference.dtype)
        was_training = self.training
        lorun = self._active_set is not None and not self._adapters_disabled
        previous_merge = get_merge_mode(self.denoisers[0]) if lorun else None
        try:
            self.eval()
            if lorun:
                set_merge_mode(self.denoisers[0], "materialized")
            with (
                torch.inference_mode(),
                torch.autocast(
                    reference.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
                ),
            ):
                if tiles is None:
                    images = self(y, image_size=image_size).images
                else:
                    images = self._restore_tiled(y, image_size, *tiles)
        finally:
            if lorun:
                set_merge_mode(self.denoisers[0], previous_merge)
            self.train(was_training)
        # a copy made outside inference mode is an ordinary tensor the caller may use with autograd
        images = images.to(device=measurement.device, dtype=measurement.dtype).clone()
        return images if batched else images[0]

    def _restore_tiled(
        self, y: Tensor, image_size: tuple[int, int] | None, factor: int, tile: int, overlap: int
    ) -> Tensor:
        image_shape = tuple(self.physics.image_shape(tuple(y.shape)))
        if image_size is not None:
            _check_image_size(self.physics, y, torch.empty(image_shape, device="meta"), image_size)
        images = restore_in_tiles(lambda window: self(window).images, y, image_shape, factor, tile, overlap)
        return _crop(images, image_size)
