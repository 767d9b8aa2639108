"""Reading the field's MATLAB ``.mat`` files (sampling matrices, CASSI masks, blur kernels).

The public data of CS, CASSI and SR ship as MATLAB v5 files. This module is the one place that
opens them (with :func:`scipy.io.loadmat`, which never unpickles Python objects) and turns a named
variable into a tensor, with clear errors for a missing file, a missing variable or a wrong rank.
The task-specific loaders in ``cs.py``, ``cassi.py`` and ``kernels.py`` are thin wrappers.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


def load_mat_variables(path: str | PathLike[str]) -> dict[str, Any]:
    """All user variables of a MATLAB v4/v5/v7 file (MATLAB's ``__header__`` entries dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no MATLAB file at {path}")
    from scipy.io import loadmat

    try:
        contents = loadmat(str(path))
    except NotImplementedError as err:  # scipy raises this for v7.3 (HDF5) files
        raise ValueError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which is not supported; expected a v5/v7 .mat "
            "(re-save it in MATLAB with save(..., '-v7'))"
        ) from err
    return {k: v for k, v in contents.items() if not k.startswith("__")}


def pick_variable(variables: dict[str, Any], path: str | PathLike[str], key: str | None, default: str) -> Any:
    """``variables[key]``; without ``key``, ``default`` if present, else the only variable."""
    if key is None:
        if default in variables:
            key = default
        elif len(variables) == 1:
            key = next(iter(variables))
        else:
            raise ValueError(f"{path} has variables {sorted(variables)}; pass key=... (expected {default!r})")
    if key not in variables:
        raise ValueError(f"{path} has no variable {key!r}; it holds {sorted(variables)}")
    return variables[key]


def load_mat_array(
    path: str | PathLike[str], key: str | None = None, default: str = "", ndim: int | None = None
) -> Tensor:
    """One numeric variable of a ``.mat`` file as a float tensor, with its rank checked.

    float64 arrays stay float64 (ISTA-Net's matrices); everything else becomes float32.
    """
    value = pick_variable(load_mat_variables(path), path, key, default)
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"variable in {path} is {array.dtype}, expected a real numeric array")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"variable in {path} has shape {array.shape}, expected a {ndim}-D array")
    dtype = np.float64 if array.dtype == np.float64 else np.float32
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
