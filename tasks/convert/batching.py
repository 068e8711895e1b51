"""How verified archives are grouped into conversion batches, and what a run does with each checksum.

Pure functions and a small class, no Prefect: the flow (`flows/full_pipeline.py::_ingest`)
feeds them and submits what they return.

- `Batcher`: archives are queued as their downloads finish. A batch goes to Dask once it
  holds `max_bytes` (by listed size) or `max_archives` archives. `flush` spreads what is
  left over the workers, so no worker waits idle behind one long batch.
- `sort_published`: what the `.CHECKSUM` files said. An error is reported (failed if
  transient, else refused); no checksum means the days are missing; a checksum means the
  archive is to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tasks.report import ArchiveOutcome
from tasks.source.archive_spec import ArchiveSpec
from tasks.source.download import Published
from tasks.source.plan import MissingDay


@dataclass
class Batcher:
    """Queue archives; `add` and `flush` return the batches to submit now, in order."""

    max_bytes: int
    max_archives: int
    sizes: Mapping[ArchiveSpec, int]
    queued: list[ArchiveSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_archives < 1:
            raise ValueError(f"batch limits must be >= 1 (max_bytes={self.max_bytes}, "
                             f"max_archives={self.max_archives})")

    def add(self, spec: ArchiveSpec) -> list[list[ArchiveSpec]]:
        """Queue `spec`; the full batch if it is now full (by bytes or by count), else nothing."""
        self.queued.append(spec)
        size = sum(self.sizes.get(s, 0) for s in self.queued)
        if size >= self.max_bytes or len(self.queued) >= self.max_archives:
            return [self._take()]
        return []

    def flush(self, slots: int) -> list[list[ArchiveSpec]]:
        """Everything queued, dealt round-robin into at most `slots` batches (one per worker thread)."""
        queued = self._take()
        parts = max(1, min(slots, len(queued)))
        return [queued[i::parts] for i in range(parts) if queued[i::parts]]

    def _take(self) -> list[ArchiveSpec]:
        taken, self.queued = self.queued, []
        return taken

    def __bool__(self) -> bool:
        return bool(self.queued)


@dataclass
class Sorted:
    """`sort_published`'s answer."""

    todo: list[tuple[ArchiveSpec, str]] = field(default_factory=list)  # (archive, published sha256)
    outcomes: list[ArchiveOutcome] = field(default_factory=list)
    missing: list[MissingDay] = field(default_factory=list)


def sort_published(published: Iterable[Published], sizes: Mapping[ArchiveSpec, int]) -> Sorted:
    """Split what the checksum files said into archives to do, outcomes to report, and missing days."""
    out = Sorted()
    for p in published:
        if p.error:  # a garbage or unreachable .CHECKSUM: this archive is reported, the others go on
            out.outcomes.append(ArchiveOutcome(p.spec.key, "failed" if p.transient else "refused",
                                               bytes=sizes.get(p.spec), detail=p.error))
        elif p.sha256 is None:
            out.missing.extend(MissingDay(p.spec.market, p.spec.symbol, d, p.missing_reason or "no checksum",
                                          p.spec.dataset)
                               for d in p.spec.days())
        else:
            out.todo.append((p.spec, p.sha256))
    return out
