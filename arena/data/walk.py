"""Listing the image files of dataset folders: every walk ends, every file counts once.

Symbolic links (and hard links) are resolved by what they point at, compared by
(device, inode):

- a file counts once: at its own place when it lies under one of the listed folders
  (a link to it is then skipped), else at the first link that reaches it;
- every folder is entered once, so a link to a parent folder or a loop of links ends;
- a folder that really lies under one listed folder is read for that folder only: a link
  in `cat/` to `dog/sub/` does not relabel dog's images as cats;
- links to files or folders outside the listed folders are followed: their images are
  read (never written), each counted once;
- only regular files are images: a FIFO or device named `x.png` is never opened (reading
  it could block forever); a broken link named `x.png` is listed, so that reading it
  reports it as an unreadable image by name.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_Key = tuple[int, int]  # (st_dev, st_ino): one file or folder, whatever the path to it


def list_images(folders: list[Path], recursive: bool = True, extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                limit: int | None = None) -> list[list[Path]]:
    """The image files under each of `folders` (a file name ending in one of `extensions`,
    any case), each list sorted; with `limit`, a folder's reading stops once it has that
    many (enough to tell whether it has any). A file that
    two folders reach counts for the folder it really lies in, else for the first folder.

    Two passes: the first reads the folders' own trees without following any link inside
    them, which fixes where every real file and folder belongs; the second follows links."""
    owner: dict[_Key, int] = {}  # folder -> index of the listed folder whose tree holds it
    counted: set[_Key] = set()
    found: list[list[Path]] = [[] for _ in folders]
    real: set[_Key] = set()  # the folders the first pass entered: their own files are counted
    for follow in (False, True):
        entered: set[_Key] = set()  # per pass: the second pass re-reads real folders for their links
        for i, top in enumerate(folders):
            _walk(i, top, follow, owner, entered, real if follow else set(), counted, found[i], recursive,
                  extensions, limit)
        real = entered
    return [sorted(files, key=str) for files in found]


def _walk(i: int, top: Path, follow: bool, owner: dict[_Key, int], entered: set[_Key], real: set[_Key],
          counted: set[_Key], out: list[Path], recursive: bool, extensions: tuple[str, ...],
          limit: int | None) -> None:
    stack = [str(top)]  # depth first, explicit: no recursion limit on deep trees
    while stack and (limit is None or len(out) < limit):
        folder = stack.pop()
        try:
            info = os.stat(folder)
        except OSError:  # vanished, or a link loop: nothing to list
            continue
        key = (info.st_dev, info.st_ino)
        if key in entered or owner.setdefault(key, i) != i:
            continue
        entered.add(key)
        links_only = key in real  # its other files were counted by the first pass
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:  # unreadable: nothing to list
            continue
        subfolders = []
        for entry in entries:
            link = entry.is_symlink()
            if link and not follow:  # the first pass leaves links to the second
                continue
            if _is_dir(entry):
                subfolders.append(entry.path)
            elif entry.name.lower().endswith(extensions) and (link or not links_only):
                _count(entry, follow, counted, out)
        if recursive:
            stack.extend(reversed(subfolders))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a link
    except OSError:
        return False


def _count(entry: os.DirEntry, follow: bool, counted: set[_Key], out: list[Path]) -> None:
    try:
        info = entry.stat()  # follows a link
    except OSError:
        if follow:  # a broken link: listed once (its folder is entered once), named when read
            out.append(Path(entry.path))
        return
    if not stat.S_ISREG(info.st_mode):
        return
    key = (info.st_dev, info.st_ino)
    if key not in counted:
        counted.add(key)
        out.append(Path(entry.path))
