"""A directory laid out the way the kubelet lays out a mounted ConfigMap, updated the way it updates one."""

from __future__ import annotations

import os
from pathlib import Path


class ConfigMapVolume:
    """What the kubelet does: files live in a timestamped dir, `..data` points at it, and the
    visible names are symlinks through `..data`. An update writes a new dir and swaps `..data`
    atomically (rename of a temporary symlink)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def publish(self, files: dict[str, str]) -> None:
        self.generation += 1
        target = self.root / f"..2026_11_22_10_00_{self.generation:02d}.000000001"
        target.mkdir()
        for name, text in files.items():
            (target / name).write_text(text)
        temporary = self.root / "..data_tmp"
        os.symlink(target.name, temporary)
        os.replace(temporary, self.root / "..data")
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                os.symlink(f"..data/{name}", visible)
