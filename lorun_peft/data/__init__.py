"""Data for training and evaluating LoRun models: images, hyperspectral cubes, patches, samples.

``images`` loads image folders or Hub datasets through Hugging Face ``datasets`` and serves
random augmented patches; ``cubes`` does the same for hyperspectral cubes (with spectral
resampling, e.g. CAVE 31 bands -> KAIST 28 bands); ``samples`` ships a few CC0 / public-domain
photographs for offline examples and tests; ``transforms`` holds the shared crop and flip/rotation
helpers; ``spectral`` stretches scarce cubes (band-wise brightness, RGB images lifted to spectra);
``mask_crops`` and ``kernel_draws`` redraw part of an operator per batch (CASSI mask crops, SR
kernels). Degradations (CS sampling, CASSI masks, SR blur) are applied later by ``physics``.
See ``docs/data.md``.
"""

from .cubes import (
    CAVE_WAVELENGTHS_31,
    KAIST_WAVELENGTHS_28,
    CubePatchDataset,
    load_cube,
    read_cube_wavelengths,
    resample_bands,
    tiles,
)
from .images import IMAGE_EXTENSIONS, RandomPatchDataset, image_to_tensor, load_image_folder
from .kernel_draws import RandomKernels
from .mask_crops import RandomMaskCrops
from .samples import list_sample_images, load_sample_image, sample_image_path, sample_patches
from .spectral import BandGainAugment, LiftedRGBPatches, MixedPatches, SpectralLift
from .transforms import dihedral

__all__ = [
    "CAVE_WAVELENGTHS_31",
    "IMAGE_EXTENSIONS",
    "KAIST_WAVELENGTHS_28",
    "BandGainAugment",
    "CubePatchDataset",
    "LiftedRGBPatches",
    "MixedPatches",
    "RandomKernels",
    "RandomMaskCrops",
    "RandomPatchDataset",
    "SpectralLift",
    "dihedral",
    "image_to_tensor",
    "list_sample_images",
    "load_cube",
    "load_image_folder",
    "load_sample_image",
    "read_cube_wavelengths",
    "resample_bands",
    "sample_image_path",
    "sample_patches",
    "tiles",
]
