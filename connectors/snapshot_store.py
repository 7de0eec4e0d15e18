"""The snapshot store: full model snapshots by version, on any fsspec file system.

A local directory by default (``Settings.snapshot_url`` = ``<run_dir>/snapshots``); any fsspec
URL in production (``s3://bucket/streamrank``, ``gs://…``, ``memory://…``). Layout::

    snapshot-000000000040.safetensors   the wire bytes of snapshot version 40 (models.delta)
    trainer-000000000040.pt             the trainer's checkpoint at that version (optimiser
                                        state; local trusted storage, read with
                                        torch.load(weights_only=True))
    PUBLISHED                           the highest version ever published (delta or snapshot)

Writes go to a temporary name (``.tmp-…``) first and are then renamed, which is atomic on a
local or POSIX file system; object stores write whole objects anyway, and readers only ever
look at finished names. Only the newest ``keep`` snapshots (and their checkpoints) are kept.

>>> store = SnapshotStore("memory://streamrank-doctest", keep=2)
>>> for v in (3, 7, 9):
...     store.put(v, f"weights {v}".encode())
>>> store.versions(), store.latest()
([7, 9], (9, b'weights 9'))
>>> store.mark_published(12); store.mark_published(10); store.published_version()
12
"""

from __future__ import annotations

import re
import uuid

import fsspec

from config import StackSettings

KEEP_SNAPSHOTS = 5
"""Snapshots kept by default (older ones and their checkpoints are deleted)."""
_SNAPSHOT = re.compile(r"snapshot-(\d{12})\.safetensors$")
_PUBLISHED = "PUBLISHED"


class SnapshotStore:
    """Snapshots, trainer checkpoints and the highest published version under one URL."""

    def __init__(self, url: str, keep: int = KEEP_SNAPSHOTS) -> None:
        if keep < 1:
            raise ValueError("keep at least one snapshot")
        self.url = url
        self.keep = keep
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.fs.makedirs(self.root, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: StackSettings) -> SnapshotStore:
        """The store at ``settings.snapshot_url``."""
        return cls(settings.snapshot_url)

    # --- snapshots ------------------------------------------------------------------------------
    def put(self, version: int, data: bytes) -> None:
        """Store snapshot ``version`` (atomically), then drop all but the newest ``keep``."""
        self._write(self._snapshot(version), data)
        for old in self.versions()[:-self.keep]:
            for path in (self._snapshot(old), self._checkpoint(old)):
                if self.fs.exists(path):
                    self.fs.rm(path)

    def get(self, version: int) -> bytes:
        """Snapshot ``version``'s bytes (FileNotFoundError if it is not kept)."""
        return self.fs.cat_file(self._snapshot(version))

    def versions(self) -> list[int]:
        """Versions of the snapshots kept, ascending."""
        names = (p.rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False))
        return sorted(int(m.group(1)) for n in names if (m := _SNAPSHOT.match(n)))

    def latest(self) -> tuple[int, bytes] | None:
        """The newest snapshot as ``(version, bytes)``, or None when there is none."""
        versions = self.versions()
        return (versions[-1], self.get(versions[-1])) if versions else None

    # --- trainer checkpoints ----------------------------------------------------------------
    def put_checkpoint(self, version: int, data: bytes) -> None:
        """Store the trainer checkpoint that goes with snapshot ``version``."""
        self._write(self._checkpoint(version), data)

    def checkpoint(self, version: int) -> bytes | None:
        """The trainer checkpoint of ``version``, or None."""
        path = self._checkpoint(version)
        return self.fs.cat_file(path) if self.fs.exists(path) else None

    # --- published versions ----------------------------------------------------------------
    def mark_published(self, version: int) -> None:
        """Record that ``version`` was published (the record only goes up)."""
        if version > self.published_version():
            self._write(self._path(_PUBLISHED), str(version).encode())

    def published_version(self) -> int:
        """The highest version ever published (0 when none)."""
        path = self._path(_PUBLISHED)
        return int(self.fs.cat_file(path)) if self.fs.exists(path) else 0

    # --- internals -----------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def _snapshot(self, version: int) -> str:
        return self._path(f"snapshot-{version:012d}.safetensors")

    def _checkpoint(self, version: int) -> str:
        return self._path(f"trainer-{version:012d}.pt")

    def _write(self, path: str, data: bytes) -> None:
        tmp = self._path(f".tmp-{uuid.uuid4().hex}")
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)
