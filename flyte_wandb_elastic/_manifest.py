"""The manifest of one run directory's copy in storage: which objects hold which bytes of its files.

Each copier rewrites it after every copy that sent something, once the objects it names are
stored, so a reader that reads the manifest first and then what it names never sees a half-written
or half-compacted copy, and needs no listing of the copy itself. Manifests lie together, apart
from the copies, so that one flat listing of the folder finds every writer's and says (by each
object's tag) which changed:

    <root>/rank-<r>/<run dir>/...                  the copy (parts, segments, indexes, whole files)
    <root>/manifests/rank-<r>/<run dir>.json       its manifest

A file is a list of pieces `[start, end, key]`, `key` relative to the copy: parts (one per copy
that found the file grown) and segments (parts joined, see `_persist`). Pieces may overlap; those
to read for bytes `[have, end)` are chosen by `pieces_from`.

So that the manifest, rewritten every copy, stays the same size however long the job runs, the
segments sealed long ago are not named in it: every `COMPACT_PARTS` segments of a file, an index
object naming all its segments so far is written once (never rewritten: the next one has another
name), and the manifest names that index in their place. A reader that reads from where it left
off (the report's refresh) needs no index; one that starts further back reads the index first
(one object a file, all in one round) and then every piece, in parallel.

Process: written by a rank's copier thread; read wherever copies are read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
        files: Each file's pieces named here, in the order they were sent.
        indexes: For a file whose older segments are in an index: the index object, as a piece
            whose bytes `[start, end)` are those its segments hold (see `index_pieces`).
        copies: Copies made so far (the manifest's version).
        ended: Whether the copy that wrote it was its writer's last.
    """

    files: dict[str, list[Piece]] = field(default_factory=dict)
    indexes: dict[str, Piece] = field(default_factory=dict)
    copies: int = 0
    ended: bool = False

    def size(self, name: str) -> int:
        """How many bytes of the file the copy holds (from 0 without a gap)."""
        index = self.indexes.get(name)
        start = index.end if index is not None else 0
        pieces = self.pieces_from(name, start)
        return pieces[-1].end if pieces else start

    def index_for(self, name: str, have: int) -> Piece | None:
        """The index to read before the file's bytes from `have` on can be chosen: `None` where
        the pieces named here hold them (a reader that has read up to the newest pieces)."""
        index = self.indexes.get(name)
        if index is None or have >= index.end or any(p.start <= have < p.end for p in self.files.get(name, [])):
            return None
        return index

    def pieces_from(self, name: str, have: int, indexed: Sequence[Piece] = ()) -> list[Piece]:
        """The fewest pieces, in order, that hold the file's bytes from `have` on (up to a gap):
        among those reaching furthest, the one that starts latest (the fewest bytes read).

        Args:
            name: The file.
            have: The first byte wanted.
            indexed: The pieces of the file's index (`index_pieces`), where `index_for` named one.
        """
        pieces = [*indexed, *self.files.get(name, [])]
        out: list[Piece] = []
        at = have
        while True:
            best = max((p for p in pieces if p.start <= at < p.end), key=lambda p: (p.end, p.start), default=None)
            if best is None:
                return out
            out.append(best)
            at = best.end

    def names(self) -> list[str]:
        """Every file the copy holds."""
        return list(dict.fromkeys([*self.indexes, *self.files]))

    def to_json(self) -> bytes:
        raw: dict[str, object] = {"copies": self.copies, "ended": self.ended, "files": _pieces_json(self.files)}
        if self.indexes:
            raw["indexes"] = {name: [p.start, p.end, p.key] for name, p in self.indexes.items()}
        return json.dumps(raw).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Read a manifest (one written before indexes existed has none)."""
        raw = json.loads(data)
        files = {name: [Piece(int(s), int(e), str(k)) for s, e, k in pieces] for name, pieces in raw["files"].items()}
        indexes = {name: Piece(int(s), int(e), str(k)) for name, (s, e, k) in raw.get("indexes", {}).items()}
        return cls(files=files, indexes=indexes, copies=int(raw.get("copies", 0)), ended=bool(raw.get("ended")))


def _pieces_json(files: dict[str, list[Piece]]) -> dict[str, list[list[int | str]]]:
    return {name: [[p.start, p.end, p.key] for p in pieces] for name, pieces in files.items()}


def index_json(segments: Sequence[Piece]) -> bytes:
    """The content of an index object naming `segments`."""
    return json.dumps([[p.start, p.end, p.key] for p in segments]).encode()


def index_pieces(data: bytes) -> list[Piece]:
    """The segments an index object names."""
    return [Piece(int(s), int(e), str(k)) for s, e, k in json.loads(data)]


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
