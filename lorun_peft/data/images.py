"""Image datasets through Hugging Face ``datasets``: folders, Hub ids, and training patches.

:func:`load_image_folder` turns a local folder of images (Set11's TIFFs, Set5's BMPs, Train400's
PNGs, BSDS JPEGs) or a Hub dataset id into a ``datasets.Dataset`` with one ``"image"`` column,
converted to gray or RGB on decode and checked up front, so that a bad file fails at load time
with its name. :class:`RandomPatchDataset` wraps such a dataset (or plain tensors) as a
``torch.utils.data.Dataset`` of random, augmented training patches. The measurement itself is
simulated later by the physics operators; this module only supplies clean images.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from .transforms import PatchSize, augment_patch, patch_rng, patch_shape, random_crop

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder", "image_to_tensor", "RandomPatchDataset"]

#: File endings read from local folders (those ``datasets``' imagefolder builder accepts too).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

_MODES = {1: "L", 3: "RGB"}


def _check_channels(channels: int | None) -> None:
    if channels is not None and channels not in _MODES:
        raise ValueError(f"channels must be 1 (gray), 3 (RGB) or None (keep the file's mode), got {channels}")


def _looks_like_path(path_or_hub_id: str) -> bool:
    """True for strings that cannot be a Hub id ``name`` / ``owner/name``, or whose parent exists here."""
    text = str(path_or_hub_id)
    parent = Path(text).expanduser().parent
    return (
        os.path.isabs(text)
        or text.startswith((".", "~"))
        or text.count("/") > 1
        or os.sep in text.replace("/", "")
        or (parent != Path(".") and parent.is_dir())
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _image_column(dataset: datasets.Dataset, source: str) -> str:
    names = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    if not names:
        raise ValueError(f"{source} has no image column; columns are {list(dataset.features)}")
    return "image" if "image" in names else names[0]


def _open_image(record: dict, where: str) -> Image.Image:
    """Decode one ``Image(decode=False)`` record fully, naming the file on failure."""
    path, data = record.get("path"), record.get("bytes")
    name = path or where
    try:
        img = Image.open(io.BytesIO(data)) if data is not None else Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image file {name}: {err}") from err
    return img


def load_image_folder(
    path_or_hub_id: str | os.PathLike,
    split: str = "train",
    channels: int | None = None,
    *,
    verify: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """Load images as a ``datasets.Dataset`` with an ``"image"`` column of PIL images.

    A local folder goes through ``datasets.load_dataset("imagefolder", data_dir=...)``, which
    works offline. A folder without ``train/``/``test/`` sub-folders is a single split, returned
    whatever ``split`` says. Anything else is treated as a Hub dataset id.

    Args:
        path_or_hub_id: a local folder, or a Hub dataset id such as ``"owner/name"``.
        split: which split to return.
        channels: 1 converts every image to gray (``"L"``, e.g. Set11's palette TIFFs), 3 to RGB,
            ``None`` keeps each file's mode. The conversion happens on decode
            (``datasets.Image(mode=...)``).
        verify: decode every image once now, so a corrupt file fails here, by name, rather than
            in the middle of training. Set ``False`` for large Hub datasets.
        cache_dir: where ``datasets`` keeps its Arrow cache (default: its usual cache).

    Raises:
        FileNotFoundError: the folder does not exist or holds no image files.
        ValueError: unknown split, no image column, or an image that cannot be decoded.
    """
    _check_channels(channels)
    source = str(path_or_hub_id)
    folder = Path(source).expanduser()
    cache = None if cache_dir is None else str(cache_dir)
    if folder.is_dir():
        if not _image_files(folder):
            raise FileNotFoundError(
                f"no image files in {folder}; expected files ending in {', '.join(IMAGE_EXTENSIONS)}"
            )
        splits = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=cache)
    elif folder.exists() or _looks_like_path(source):
        raise FileNotFoundError(f"image folder {folder} does not exist (or is not a directory)")
    else:
        splits = datasets.load_dataset(source, cache_dir=cache)
    if folder.is_dir() and split not in splits and len(splits) == 1:
        # A flat folder is one split, but ``datasets`` may name it after the files (Train400's
        # ``test_001.png`` ... make a "test" split): read it whatever it is called.
        split = next(iter(splits))
    if split not in splits:
        raise ValueError(f"split {split!r} not found in {source}; available splits: {list(splits)}")
    dataset = splits[split]
    column = _image_column(dataset, source)
    if column != "image":
        if "image" in dataset.column_names:
            dataset = dataset.remove_columns("image")
        dataset = dataset.rename_column(column, "image")
    if verify:
        raw = dataset.cast_column("image", datasets.Image(decode=False))
        for index, record in enumerate(raw["image"]):
            _open_image(record, f"{source}[{index}]").close()
    return dataset.cast_column("image", datasets.Image(mode=_MODES.get(channels)))


def image_to_tensor(img: Image.Image, channels: int | None = None) -> Tensor:
    """PIL image -> float32 ``(C, H, W)`` in [0, 1]; 16-bit gray is scaled by 65535, 8-bit by 255.

    ``channels`` 1 or 3 converts the mode; ``None`` keeps gray as C=1 and turns anything else
    (palette, RGBA, CMYK, ...) into RGB.
    """
    _check_channels(channels)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float32) / 65535.0
        array = array[None]
        if channels == 3:
            array = np.repeat(array, 3, axis=0)
    else:
        native = "L" if img.mode in ("L", "1") else "RGB"
        mode = native if channels is None else _MODES[channels]
        array = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


class RandomPatchDataset(Dataset):
    """Random ``patch_size`` crops of a set of images, with random flips and 90-degree turns.

    Item ``i`` is a float32 ``(C, h, w)`` tensor in [0, 1] (``h = w = patch_size``, or
    ``patch_size = (h, w)``: then only the shape-keeping flips and the half turn), cut from image
    ``i // patches_per_image``. The crop position and the flip/rotation depend only on
    ``(seed, epoch, i)``: the same item is the same patch whatever the worker or the order, and
    :meth:`set_epoch` draws fresh patches for a new epoch (call it like
    ``DistributedSampler.set_epoch``).

    Args:
        images: a ``datasets.Dataset`` with an image column (e.g. from :func:`load_image_folder`),
            or a sequence of ``(C, H, W)`` tensors in [0, 1].
        patch_size: side of the square patches, or ``(height, width)``.
        patches_per_image: patches per image per epoch.
        channels: 1 or 3; ``None`` takes it from the dataset's ``Image(mode=...)`` (or from the
            tensors).
        augment: apply one of the 8 flips/rotations, chosen uniformly.
        seed: base seed.
        cache_images: keep decoded images in memory (faster, costs H*W*C*4 bytes per image).
    """

    def __init__(
        self,
        images: datasets.Dataset | Sequence[Tensor],
        patch_size: PatchSize,
        patches_per_image: int = 1,
        *,
        channels: int | None = None,
        augment: bool = True,
        seed: int = 0,
        cache_images: bool = False,
    ) -> None:
        _check_channels(channels)
        if patches_per_image < 1:
            raise ValueError(f"patches_per_image must be positive, got {patches_per_image}")
        height, width = patch_shape(patch_size)
        self.patch_size: PatchSize = height if height == width else (height, width)
        self.patches_per_image = int(patches_per_image)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self._cache: dict[int, Tensor] | None = {} if cache_images else None
        if isinstance(images, datasets.Dataset):
            column = _image_column(images, "the dataset")
            if channels is None:
                mode = images.features[column].mode
                if mode not in ("L", "RGB"):
                    raise ValueError(
                        "pass channels=1 or 3: the dataset's image column does not fix a mode "
                        f"(mode={mode!r}); load_image_folder(..., channels=...) sets one"
                    )
                channels = 1 if mode == "L" else 3
            self._raw = images.cast_column(column, datasets.Image(decode=False))
            self._column = column
            self._tensors: list[Tensor] | None = None
        else:
            self._tensors = list(images)
            self._raw = None
            if not self._tensors:
                raise ValueError("no images given; expected at least one")
            for index, tensor in enumerate(self._tensors):
                if not isinstance(tensor, Tensor) or tensor.ndim != 3:
                    raise ValueError(f"images[{index}] must be a (C, H, W) tensor, got {type(tensor)}")
            found = {int(t.shape[0]) for t in self._tensors}
            if channels is None:
                if len(found) != 1:
                    raise ValueError(f"images have different channel counts {sorted(found)}; pass channels=")
                channels = found.pop()
            elif found != {channels}:
                raise ValueError(f"expected {channels}-channel tensors, got channel counts {sorted(found)}")
        if self._num_images() == 0:
            raise ValueError("the dataset has no rows; expected at least one image")
        self.channels = int(channels)

    def _num_images(self) -> int:
        return len(self._tensors) if self._tensors is not None else len(self._raw)

    def __len__(self) -> int:
        return self._num_images() * self.patches_per_image

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of patches (deterministic per ``(seed, epoch)``)."""
        self.epoch = int(epoch)

    def _record(self, image_index: int) -> dict:
        return self._raw[image_index][self._column]

    def _name(self, image_index: int) -> str:
        if self._raw is not None and self._record(image_index).get("path"):
            return f"image file {self._record(image_index)['path']}"
        return f"image {image_index}"

    def _image(self, image_index: int) -> Tensor:
        if self._tensors is not None:
            return self._tensors[image_index]
        if self._cache is not None and image_index in self._cache:
            return self._cache[image_index]
        with _open_image(self._record(image_index), f"image {image_index}") as img:
            tensor = image_to_tensor(img, self.channels)
        if self._cache is not None:
            self._cache[image_index] = tensor
        return tensor

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} patches")
        image_index = index // self.patches_per_image
        rng = patch_rng(self.seed, self.epoch, index)
        patch = random_crop(self._image(image_index), self.patch_size, rng, name=self._name(image_index))
        if self.augment:
            patch = augment_patch(patch, rng)
        return patch.to(torch.float32).contiguous()
