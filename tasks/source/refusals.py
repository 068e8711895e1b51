"""Refusals already known: the same archive, with the same published checksum, refused before.

Every refused archive leaves a note beside its quarantine path (`ArchiveSpec.quarantine_note`):
the download writes one for a checksum mismatch, the conversion for an archive it cannot read
(corrupt ZIP, invalid CSV, unsafe member), the merge for trade ids that collide with other
days. A note records the kind of refusal, the sha256 Binance published for the archive, and
when it was first refused (`refused_at`, kept while the kind and the checksum stay the same).

A run reads the notes of the archives it is about to fetch before it starts
(`prior_refusals`): an archive refused again the same way, under the same published
checksum, is a *known* refusal, reported ("refused again, known since ...") but not a
reason to fail the run again (unless `--strict`). Binance re-publishing the archive (a new
checksum) makes any later refusal of it new.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.atomic import write_bytes_atomic
from tasks.errors import ChecksumMismatch, CorruptArchive, InvalidData, TradeIdCollision, UnsafePath
from tasks.source.archive_spec import QUARANTINE_NOTE_SUFFIX, ArchiveSpec

if TYPE_CHECKING:
    from tasks.report import ArchiveOutcome

#: The note kind of each refusal that can become known, and the error kinds it stands for.
#: A merge's note says "lake conflict" (tasks.lake.compact.quarantine_staged); the next runs refuse
#: the archive as "trade ids collide" without converting it (tasks.lake.ingest.merge_refusal).
KNOWN_KINDS: dict[str, tuple[str, ...]] = {
    ChecksumMismatch.kind: (ChecksumMismatch.kind,),
    CorruptArchive.kind: (CorruptArchive.kind,),
    InvalidData.kind: (InvalidData.kind,),
    UnsafePath.kind: (UnsafePath.kind,),
    "lake conflict": ("lake conflict", TradeIdCollision.kind),
}
#: Kinds of conversion errors that are about the archive's bytes (noted, so they can become known).
ARCHIVE_CONTENT_KINDS = (CorruptArchive.kind, InvalidData.kind, UnsafePath.kind)


@dataclass(frozen=True)
class RefusalNote:
    """What a quarantine note says, normalised across the notes' writers."""

    archive: str
    kind: str
    published_sha256: str | None
    since: str  # ISO time (UTC) of the first refusal under this kind and checksum
    reason: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_note(path: Path) -> RefusalNote | None:
    """The note at `path`, or None if there is none or it cannot be read.

    Notes written before the `kind` and `refused_at` fields: one with a `published_sha256`
    is a checksum mismatch (the download's), and the file's modification time stands for
    when it was refused.
    """
    try:
        doc: Any = json.loads(path.read_text())
        mtime = path.stat().st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    kind = doc.get("kind") or (ChecksumMismatch.kind if "published_sha256" in doc else "")
    # The download records the bytes' sha256 beside the published one; the others only the published one.
    published = doc.get("published_sha256") if "published_sha256" in doc else doc.get("sha256")
    since = doc.get("refused_at") or datetime.fromtimestamp(mtime, UTC).isoformat(timespec="seconds")
    return RefusalNote(str(doc.get("archive", "")), str(kind), published if isinstance(published, str) else None,
                       str(since), str(doc.get("reason", "")))


def write_note(spec: ArchiveSpec, data_dir: Path, doc: dict[str, Any]) -> None:
    """Write an archive's quarantine note (atomically), keeping the date it was first refused.

    `doc` holds at least `kind` and the published checksum (`published_sha256`, or
    `sha256` for a note without the bytes' own hash). `refused_at` is carried over from the
    note already there when that one records the same kind and published checksum.
    """
    path = spec.quarantine_note(data_dir)
    old = read_note(path)
    published = doc.get("published_sha256", doc.get("sha256"))
    same = old is not None and old.kind == doc.get("kind") and old.published_sha256 == published
    note = {"archive": spec.key, **doc, "refused_at": old.since if same and old is not None else _now()}
    write_bytes_atomic(path, json.dumps(note, indent=2).encode())


def note_content_refusal(spec: ArchiveSpec, sha256: str, data_dir: Path, kind: str, reason: str) -> None:
    """Record that the conversion refused the archive published as `sha256` for its bytes (`kind`)."""
    write_note(spec, data_dir, {"kind": kind, "sha256": sha256, "reason": reason})


def prior_refusals(data_dir: Path, todo: Iterable[tuple[ArchiveSpec, str]]) -> dict[str, RefusalNote]:
    """The notes of the archives in `todo` (spec, published sha256) that record that very checksum.

    Read before the run fetches anything: what this run refuses for the first time is not
    in it. Each folder of notes is listed once (most archives have none).
    """
    by_folder: dict[Path, list[tuple[ArchiveSpec, str]]] = {}
    for spec, sha in todo:
        by_folder.setdefault(spec.quarantine_note(data_dir).parent, []).append((spec, sha))
    out: dict[str, RefusalNote] = {}
    for folder, items in by_folder.items():
        try:
            present = {n for n in os.listdir(folder) if n.endswith(QUARANTINE_NOTE_SUFFIX)}
        except OSError:
            continue
        for spec, sha in items:
            path = spec.quarantine_note(data_dir)
            if path.name not in present:
                continue
            note = read_note(path)
            if note is not None and note.published_sha256 == sha and note.kind in KNOWN_KINDS:
                out[spec.key] = note
    return out


def mark_known(outcomes: Sequence[ArchiveOutcome], prior: dict[str, RefusalNote]) -> int:
    """Mark each refused outcome that `prior` already recorded the same way as known; how many were."""
    marked = 0
    for o in outcomes:
        note = prior.get(o.archive)
        if o.status != "refused" or note is None or o.kind not in KNOWN_KINDS[note.kind]:
            continue
        o.known_since = note.since
        marked += 1
    return marked
