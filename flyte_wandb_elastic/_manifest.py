"""The manifest of one run directory's copy in storage: which objects hold which bytes of its files.

Each copier rewrites it after every copy that sent something, once the objects it names are
stored, so a reader that reads the manifest first and then what it names never sees a half-written
or half-compacted copy, and needs no listing of the copy itself. Manifests lie together, apart
from the copies, so that one flat listing of the folder finds every writer's and says (by each
object's tag) which changed:

    <root>/rank-<r>/<run dir>/...                  the copy (parts, segments, whole files)
    <root>/manifests/rank-<r>/<run dir>.json       its manifest

A file is a list of pieces `[start, end, key]`, `key` relative to the copy: parts (one per copy
that found the file grown) and segments (parts joined, see `_persist`). Pieces may overlap; those
to read for bytes `[have, end)` are chosen by `pieces_from`.

Process: written by a rank's copier thread; read wherever copies are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from . import _storage

MANIFESTS = "manifests"


@dataclass(frozen=True)
class Piece:
    """The bytes `[start, end)` of a file, held by the object `key` (relative to the copy)."""

    start: int
    end: int
    key: str


@dataclass
class Manifest:
    """What a copy holds, file by file (paths relative to the run directory).

    Attributes:
        files: Each file's pieces, in the order they were sent.
        copies: Copies made so far (the manifest's version).
        ended: Whether the copy that wrote it was its writer's last.
    """

    files: dict[str, list[Piece]] = field(default_factory=dict)
    copies: int = 0
    ended: bool = False

    def size(self, name: str) -> int:
        """How many bytes of the file the copy holds (from 0 without a gap)."""
        pieces = self.pieces_from(name, 0)
        return pieces[-1].end if pieces else 0

    def pieces_from(self, name: str, have: int) -> list[Piece]:
        """The fewest pieces, in order, that hold the file's bytes from `have` on (up to a gap)."""
        pieces = sorted(self.files.get(name, []), key=lambda p: (p.start, -p.end))
        out: list[Piece] = []
        at = have
        while True:
            best = max((p for p in pieces if p.start <= at < p.end), key=lambda p: p.end, default=None)
            if best is None:
                return out
            out.append(best)
            at = best.end

    def to_json(self) -> bytes:
        files = {name: [[p.start, p.end, p.key] for p in pieces] for name, pieces in self.files.items()}
        return json.dumps({"copies": self.copies, "ended": self.ended, "files": files}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = json.loads(data)
        files = {name: [Piece(int(s), int(e), str(k)) for s, e, k in pieces] for name, pieces in raw["files"].items()}
        return cls(files=files, copies=int(raw.get("copies", 0)), ended=bool(raw.get("ended")))


def manifest_uri(copy_uri: str) -> str:
    """Where the manifest of the copy `.../<root>/<writer>/<run dir>` lies:
    `.../<root>/manifests/<writer>/<run dir>.json`."""
    writer_uri, run_dir = copy_uri.rstrip("/").rsplit("/", 1)
    root, writer = writer_uri.rsplit("/", 1)
    return _storage.join(root, MANIFESTS, writer, f"{run_dir}.json")


def read_manifest(copy_uri: str) -> Manifest | None:
    """The manifest of the copy at `copy_uri`, or `None` where it has none (an older copy)."""
    data = _storage.read_bytes(manifest_uri(copy_uri))
    return Manifest.from_json(data) if data is not None else None
