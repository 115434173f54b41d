"""Tiny datasets written in their real on-disk formats, for tests that must stay offline.

Each `make_*(root)` writes under `root` exactly what the real download unpacks to
(file names, layouts, encodings) and returns the expected image counts per split.
Pixel values come from a seeded generator, so every call writes the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha1(name.encode()).hexdigest()[:8], 16))


def _image(rng: np.random.Generator, w: int, h: int, mode: str = "RGB") -> Image.Image:
    channels = 1 if mode == "L" else 3
    a = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if mode == "L" else a, mode)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(root: str | Path) -> dict[str, int]:
    """root/cifar-10-batches-py/: data_batch_1..5 (4 images each), test_batch (6), batches.meta.

    Each batch is a pickled dict: data uint8 [N, 3072] (R, G, B planes of 32x32), labels list.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng("cifar10")
    for name, n in [(f"data_batch_{k}", 4) for k in range(1, 6)] + [("test_batch", 6)]:
        _pickle(folder / name, {
            "batch_label": name,
            "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{k}.png" for k in range(n)],
        })
    _pickle(folder / "batches.meta", {
        "num_cases_per_batch": 4, "num_vis": 3072,
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    })
    return {"train": 20, "test": 6}


def make_cifar100(root: str | Path) -> dict[str, int]:
    """root/cifar-100-python/: train (12 images), test (5), meta; labels as fine_labels + coarse_labels."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng("cifar100")
    for name, n in [("train", 12), ("test", 5)]:
        _pickle(folder / name, {
            "filenames": [f"img_{k}.png" for k in range(n)],
            "batch_label": name,
            "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
            "coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        })
    _pickle(folder / "meta", {"fine_label_names": [f"fine{k}" for k in range(100)],
                              "coarse_label_names": [f"coarse{k}" for k in range(20)]})
    return {"train": 12, "test": 5}


def make_stl10(root: str | Path) -> dict[str, int]:
    """root/stl10_binary/: *_X.bin uint8 images (3x96x96 column-major each), *_y.bin 1-based labels.

    train 4 labeled + 6 unlabeled = 10, test 5.
    """
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng("stl10")
    counts = {"train": 4, "test": 5, "unlabeled": 6}
    for split, n in counts.items():
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W)
        images.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # each plane column-major
        if split != "unlabeled":
            (rng.integers(0, 10, n) + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text(
        "\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    (folder / "fold_indices.txt").write_text("0 1\n2 3\n" * 5)
    return {"train": counts["train"] + counts["unlabeled"], "test": counts["test"], "labeled_train": 4}


def celeba_attribute(index: int, attribute: int) -> int:
    """The fixture's attribute value (0/1) of image number `index` (1-based, as in 000001.jpg)."""
    return int((index + attribute) % 3 == 0)


def make_celeba(root: str | Path) -> dict[str, int]:
    """root/celeba/: img_align_celeba/00000k.jpg (178x218), list_eval_partition.txt, list_attr_celeba.txt.

    Images 1-6 are partition 0 (train), 7-8 partition 1 (val), 9-10 partition 2 (test).
    """
    folder = Path(root) / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rng = _rng("celeba")
    n = 10
    partition, attrs = [], [str(n), " ".join(CELEBA_ATTRIBUTES) + " "]
    for k in range(1, n + 1):
        name = f"{k:06d}.jpg"
        _image(rng, 178, 218).save(images / name, quality=90)
        partition.append(f"{name} {0 if k <= 6 else 1 if k <= 8 else 2}")
        # right-aligned width 2 values, as in the real file ("000001.jpg -1  1  1 -1 ...")
        attrs.append(name + " " + " ".join(f"{2 * celeba_attribute(k, a) - 1:2d}" for a in range(40)))
    (folder / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    (folder / "list_attr_celeba.txt").write_text("\n".join(attrs) + "\n")
    return {"train": 6, "test": 2}


def make_lsun(root: str | Path, category: str = "bedroom") -> dict[str, int]:
    """root/<category>_train_lmdb and root/<category>_val_lmdb: lmdb databases as LSUN ships them.

    Keys are 40-char hex ids (bytes), values encoded WEBP images of various non-square sizes.
    train 5 images, test (val) 3.
    """
    import lmdb

    rng = _rng(f"lsun-{category}")
    counts = {"train": 5, "test": 3}
    for split, n in counts.items():
        path = Path(root) / f"{category}_{'train' if split == 'train' else 'val'}_lmdb"
        path.parent.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(str(path), map_size=1 << 24, subdir=True)
        with env.begin(write=True) as txn:
            for k in range(n):
                buf = io.BytesIO()
                _image(rng, int(rng.integers(40, 80)), int(rng.integers(40, 80))).save(buf, "WEBP", quality=80)
                key = hashlib.sha1(f"{category}{split}{k}".encode()).hexdigest().encode()
                txn.put(key, buf.getvalue())
        env.close()
    return counts


TINY_WNIDS = ["n02124075", "n01443537", "n09246464"]  # listed unsorted, as wnids.txt is


def make_tinyimagenet(root: str | Path) -> dict[str, int]:
    """root/tiny-imagenet-200/: wnids.txt, words.txt, train/<wnid>/images/<wnid>_k.JPEG (+ _boxes.txt),
    val/images/val_k.JPEG + val/val_annotations.txt, test/images (unlabeled; unused).

    64x64 JPEGs; one train image per class is grayscale, as some real ones are.
    Train 3 classes x 4 = 12 images, val 6 (val_k belongs to TINY_WNIDS[k % 3]).
    """
    base = Path(root) / "tiny-imagenet-200"
    rng = _rng("tinyimagenet")
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tthing {k}\n" for k, w in enumerate(TINY_WNIDS)))
    for w in TINY_WNIDS:
        images = base / "train" / w / "images"
        images.mkdir(parents=True, exist_ok=True)
        boxes = []
        for k in range(4):
            _image(rng, 64, 64, "L" if k == 0 else "RGB").save(images / f"{w}_{k}.JPEG", "JPEG")
            boxes.append(f"{w}_{k}.JPEG\t0\t0\t63\t63")
        (base / "train" / w / f"{w}_boxes.txt").write_text("\n".join(boxes) + "\n")
    val = base / "val" / "images"
    val.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(6):
        _image(rng, 64, 64).save(val / f"val_{k}.JPEG", "JPEG")
        lines.append(f"val_{k}.JPEG\t{TINY_WNIDS[k % 3]}\t1\t2\t60\t61")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "test" / "images").mkdir(parents=True, exist_ok=True)
    _image(rng, 64, 64).save(base / "test" / "images" / "test_0.JPEG", "JPEG")
    return {"train": 12, "test": 6}


def make_imagefolder(root: str | Path) -> dict[str, int]:
    """root/train/<class>/* and root/test/<class>/* with classes 'cat' and 'dog'.

    Mixed formats (PNG, JPEG, a grayscale PNG, one in a nested folder) and sizes;
    a non-image file is ignored. Train 3 + 3 = 6 images, test 2 + 1 = 3.
    """
    root = Path(root)
    rng = _rng("imagefolder")
    layout = {
        "train": {"cat": ["a.png", "b.jpg", "sub/c.png"], "dog": ["a.jpeg", "b.png", "gray.png"]},
        "test": {"cat": ["x.png", "y.jpg"], "dog": ["z.png"]},
    }
    for split, classes in layout.items():
        for cls, names in classes.items():
            for name in names:
                path = root / split / cls / name
                path.parent.mkdir(parents=True, exist_ok=True)
                size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
                _image(rng, *size, mode="L" if name.startswith("gray") else "RGB").save(path)
            (root / split / cls / "notes.txt").write_text("not an image\n")
    return {"train": 6, "test": 3, "classes": 2}
