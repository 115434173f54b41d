"""The file readers' pixels and labels against independent readers: torchvision's
ImageFolder for file lists and labels, PIL + torchvision transforms for the pixels
(CelebA's 140 px center crop, resizing of non-square images, grayscale sources)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from arena.data import DataConfig, build_dataset, to_float
from tests import fixtures


def pil_reference(path: Path, resolution: int, crop: int | None = None) -> torch.Tensor:
    """RGB, [center crop], shorter side to `resolution` (bicubic), center crop: float [-1, 1]."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    steps = ([T.CenterCrop(crop)] if crop else []) + [T.Resize(resolution, T.InterpolationMode.BICUBIC),
                                                      T.CenterCrop(resolution)]
    img = T.Compose(steps)(img)
    return to_float(torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    out = {}
    for name, make in (("celeba", fixtures.make_celeba), ("tinyimagenet", fixtures.make_tinyimagenet),
                       ("imagefolder", fixtures.make_imagefolder)):
        root = tmp_path_factory.mktemp(name)
        make(root)
        out[name] = root
    return out


@pytest.mark.parametrize("resolution", [64, 32])
def test_celeba_pixels_are_the_140px_center_crop_resized(roots, resolution):
    ds = build_dataset(DataConfig(name="celeba", root=str(roots["celeba"]), resolution=resolution), "train")
    folder = roots["celeba"] / "celeba" / "img_align_celeba"
    assert [f.name for f in ds.files] == [f"{k:06d}.jpg" for k in range(1, 7)]  # partition 0
    for i, f in enumerate(ds.files):
        assert f == folder / f.name
        torch.testing.assert_close(ds[i][0], pil_reference(f, resolution, crop=140), rtol=0, atol=0)


@pytest.mark.parametrize("split", ["train", "test"])
def test_tinyimagenet_pixels_and_labels(roots, split):
    base = roots["tinyimagenet"] / "tiny-imagenet-200"
    for resolution in (64, 32):
        ds = build_dataset(DataConfig(name="tinyimagenet", root=str(roots["tinyimagenet"]), resolution=resolution),
                           split)
        if split == "train":
            ref = ImageFolder(str(base / "train"))  # <wnid>/images/*.JPEG, classes = sorted wnids
            assert [Path(p) for p, _ in ref.samples] == ds.files
            assert [c for _, c in ref.samples] == ds.labels.tolist() and ref.classes == ds.class_names
        for i, f in enumerate(ds.files):
            expected = pil_reference(f, resolution)
            if resolution == 64:  # the native size: the decoded pixels themselves
                with Image.open(f) as img:
                    expected = to_float(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1))
            torch.testing.assert_close(ds[i][0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("resolution", [16, 24])
def test_imagefolder_pixels_and_labels(roots, resolution):
    root = roots["imagefolder"]
    for split in ("train", "test"):
        ds = build_dataset(DataConfig(name="imagefolder", root=str(root), resolution=resolution), split)
        ref = ImageFolder(str(root / split), allow_empty=True)
        assert [Path(p) for p, _ in ref.samples] == ds.files
        assert [c for _, c in ref.samples] == ds.labels.tolist()
        sizes = set()
        for i, f in enumerate(ds.files):
            with Image.open(f) as img:
                sizes.add(img.size[0] == img.size[1])
            torch.testing.assert_close(ds[i][0], pil_reference(f, resolution), rtol=0, atol=0)
        assert False in sizes  # non-square sources: the crop of the longer side is exercised
