"""Degradation operators (``Phi``) for deep unfolding: block CS, SD-CASSI, blur + downsampling, denoising.

Every operator implements :class:`LinearOperator` (``A``, ``A_adjoint``, the PGD and HQS data steps,
``init``, ``measure``) and rebuilds from its config with :func:`physics_from_config`.
See ``docs/physics.md``.
"""

from .base import PHYSICS_REGISTRY, LinearOperator, as_batch_scalar, physics_from_config, register_physics
from .cassi import CASSI, load_cassi_mask, load_cassi_measurement
from .cs import ISTA_NET_NUM_ROWS, BlockCS, derive_sampling_matrix, load_ista_net_matrix, num_measurements
from .denoising import Denoising
from .inpainting import INPAINTING_FACTORY, PixelInpainting, pixel_inpainting
from .io import load_mat_array, load_mat_variables
from .kernels import (
    KERNELS_12_NAMES,
    gaussian_kernel,
    load_bicubic_kernels,
    load_kernel_cell,
    load_kernels_12,
    motion_kernel,
    synthetic_kernels_12,
)
from .sr import KERNEL_SUM_TOLERANCE, BlurDownsample, check_kernel, kernel_to_otf
from .tools import adjointness_test, operator_norm, pgd_step_size
from .wrapped import (
    OPERATOR_FACTORIES,
    WrappedOperator,
    as_operator,
    conjugate_gradient,
    register_operator_factory,
)

__all__ = [
    "CASSI",
    "ISTA_NET_NUM_ROWS",
    "KERNELS_12_NAMES",
    "KERNEL_SUM_TOLERANCE",
    "PHYSICS_REGISTRY",
    "BlockCS",
    "derive_sampling_matrix",
    "BlurDownsample",
    "Denoising",
    "INPAINTING_FACTORY",
    "PixelInpainting",
    "pixel_inpainting",
    "LinearOperator",
    "OPERATOR_FACTORIES",
    "WrappedOperator",
    "adjointness_test",
    "as_operator",
    "conjugate_gradient",
    "operator_norm",
    "pgd_step_size",
    "register_operator_factory",
    "as_batch_scalar",
    "check_kernel",
    "gaussian_kernel",
    "kernel_to_otf",
    "load_bicubic_kernels",
    "load_cassi_mask",
    "load_cassi_measurement",
    "load_ista_net_matrix",
    "load_kernel_cell",
    "load_kernels_12",
    "load_mat_array",
    "load_mat_variables",
    "motion_kernel",
    "num_measurements",
    "physics_from_config",
    "register_physics",
    "synthetic_kernels_12",
]
