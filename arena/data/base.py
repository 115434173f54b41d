"""Dataset bases and pixel conversions shared by every format.

Every dataset is an `ImageDataset` whose items are `(x, y)`: x float32 [C, H, W] in
[-1, 1]; y a LongTensor scalar class, a LongTensor [K] of 0/1 (multi-label), or -1
(unlabeled). Small datasets live in memory as uint8 (`.images`, `.labels`) so the
trainer can batch them without a DataLoader; big ones decode from disk per item.
"""
from __future__ import annotations

import os
import stat
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from arena.registry import ConfigError

# ---------------------------------------------------------------------------- pixels


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]: x / 127.5 - 1 (0 -> -1, 255 -> 1); float images
    are taken to be in [-1, 1] already and pass through as float32."""
    return images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] by round((x + 1) * 127.5), clamped: the inverse of
    to_float, so 8-bit images round-trip exactly; uint8 passes through."""
    if images.dtype == torch.uint8:
        return images
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, size, size], bilinear with antialias.

    Results are rounded back to uint8 so every dataset is 8-bit quantised the same
    way, whether it came from memory or disk (reference statistics depend on it).
    Chunked so 50k images at 64 px never need one 2 GB float copy.
    """
    if images.shape[-2:] == (size, size):
        return images
    out = []
    for chunk in images.split(4096):
        y = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(y.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], size, size))


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit grayscale (PIL modes I;16*, and I from a PNG, as older Pillow opens those) ->
    8-bit L, scaled v -> round(v / 257) (65535 -> 255); PIL's own convert clips at 255, which
    turns almost every pixel white. 32-bit integer or float pixels (I, F from TIFFs) have no
    known range: ValueError. Other modes (16-bit RGB PNGs open as 8-bit RGB) pass through."""
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
        a = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.round(a / 257), 0, 255).astype(np.uint8), "L")
    if img.mode in ("I", "F"):
        raise ValueError(f"{'32-bit integer' if img.mode == 'I' else 'floating-point'} pixels (PIL mode "
                         f"{img.mode}) have no known range to scale to 8 bits; convert the file to 8 or 16 bits")
    return img


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    # torchvision's CenterCrop offsets, int(round((w - size) / 2)) (round half to even),
    # so images match a torchvision Resize + CenterCrop pipeline pixel for pixel.
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def pil_to_uint8(img: Image.Image, resolution: int, crop: int | None = None) -> torch.Tensor:
    """PIL image -> uint8 [3, resolution, resolution].

    Optional square center crop of `crop` px first (CelebA), then resize the shorter
    side to `resolution` and center-crop the longer one, so aspect ratio is kept: the
    same pixels as torchvision's [CenterCrop(crop)], Resize(resolution, BICUBIC),
    CenterCrop(resolution) on the PIL image.
    """
    img = to_8bit(img).convert("RGB")
    if crop is not None:
        img = _center_crop(img, min(crop, *img.size))
    w, h = img.size
    if min(w, h) != resolution:
        # the longer side as torchvision computes it: truncated, not rounded
        if w <= h:
            size = (resolution, int(resolution * h / w))
        else:
            size = (int(resolution * w / h), resolution)
        # PIL widens the bicubic kernel when shrinking, i.e. it antialiases.
        img = img.resize(size, Image.BICUBIC)
    if img.size != (resolution, resolution):
        img = _center_crop(img, resolution)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()  # HWC -> CHW


# ---------------------------------------------------------------------------- datasets


class ImageDataset(torch.utils.data.Dataset):
    """Base: labels, shape facts and `describe`; subclasses supply `__getitem__`."""

    in_memory: bool = False

    def __init__(self, name: str, split: str, labels: torch.Tensor, channels: int, resolution: int,
                 num_classes: int, multilabel: bool = False, class_names: list[str] | None = None):
        self.name = name
        self.split = split
        self.labels = labels.long()  # [N], or [N, K] 0/1 when multilabel; -1 = unlabeled
        self.channels = channels
        self.resolution = resolution
        self.num_classes = num_classes  # 0 when unlabeled; K for multi-label
        self.multilabel = multilabel
        self.class_names = class_names or []

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> str:
        if self.num_classes == 0:
            classes = "unlabeled"
        elif self.multilabel:
            classes = f"{self.num_classes} binary attributes"
        else:
            classes = f"{self.num_classes} classes"
            unlabeled = int((self.labels < 0).sum())
            if unlabeled:
                classes += f", {unlabeled} unlabeled (label -1)"
        size = f"{self.channels}x{self.resolution}x{self.resolution}"
        return f"{self.name} {self.split}: {len(self)} images, {size}, {classes}"


class InMemoryDataset(ImageDataset):
    """uint8 images [N, C, H, W] held in memory; items are exactly to_float(images[i]), labels[i]."""

    in_memory = True

    def __init__(self, name: str, split: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 class_names: list[str] | None = None):
        assert images.dtype == torch.uint8 and images.shape[-1] == images.shape[-2] and len(images) == len(labels)
        super().__init__(name, split, labels, images.shape[1], images.shape[-1], num_classes,
                         class_names=class_names)
        self.images = images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_float(self.images[i]), self.labels[i]


class DecodedDataset(ImageDataset, ABC):
    """Images decoded one by one (files, lmdb values), with bad-file handling and flips.

    Subclasses give `_decode(i) -> PIL image` and `_item_name(i)`. An image that fails
    to decode raises a ConfigError naming it, or with `skip_bad_files` is replaced by
    the next readable index (deterministic), recorded in `bad_files` and warned once.
    With DataLoader workers each worker keeps its own `bad_files`.
    """

    def __init__(self, name: str, split: str, labels: torch.Tensor, resolution: int, num_classes: int,
                 augment: bool, skip_bad_files: bool, crop: int | None = None, multilabel: bool = False,
                 class_names: list[str] | None = None):
        super().__init__(name, split, labels, 3, resolution, num_classes, multilabel, class_names)
        self.augment = augment  # random horizontal flip
        self.skip_bad_files = skip_bad_files
        self.crop = crop
        self.bad_files: set[str] = set()

    @abstractmethod
    def _decode(self, i: int) -> Image.Image:
        """Image i as a PIL image (raises on an unreadable file)."""

    @abstractmethod
    def _item_name(self, i: int) -> str:
        """What to call image i in an error message (a file name or a key)."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        for step in range(n):
            j = (i + step) % n
            try:
                x = pil_to_uint8(self._decode(j), self.resolution, self.crop)
                break
            except Exception as e:  # PIL reports bad data as OSError, SyntaxError, ValueError, ...
                name = self._item_name(j)
                if not self.skip_bad_files:
                    raise ConfigError(f"unreadable image {name} ({type(e).__name__}: {e}); fix or remove it, "
                                      f"or set data.skip_bad_files: true to skip such files") from e
                if name not in self.bad_files:
                    self.bad_files.add(name)
                    warnings.warn(f"skipping unreadable image {name} ({type(e).__name__}: {e})")
        else:
            raise ConfigError(f"{self.name} {self.split}: none of the {n} images could be read")
        if self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return to_float(x), self.labels[j]  # the label of the image actually returned


class FileDataset(DecodedDataset):
    """One image file per item (CelebA, Tiny ImageNet, image folders)."""

    def __init__(self, name: str, split: str, files: list[Path], labels: torch.Tensor, **kwargs):
        super().__init__(name, split, labels, **kwargs)
        self.files = files

    def _decode(self, i: int) -> Image.Image:
        # Opened without blocking, then checked: a FIFO (or device) named like an image
        # would otherwise block the read forever; O_NONBLOCK changes nothing for a file.
        fd = os.open(self.files[i], os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError("not a regular file (a folder, FIFO, socket or device)")
        with os.fdopen(fd, "rb") as f:
            try:
                img = Image.open(f)
            except UnidentifiedImageError:  # PIL would name the file object; the caller names the path
                raise UnidentifiedImageError("cannot identify image file: not an image format PIL reads") from None
            with img:
                return to_8bit(img).convert("RGB")  # forces the full decode inside the `with`

    def _item_name(self, i: int) -> str:
        return str(self.files[i])


# STL-10 binary format: uint8, each image 3 x 96 x 96, channel planes stored
# column-major (so read as (3, 96, 96) it is transposed: swap the last two axes).
