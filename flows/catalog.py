"""Which datasets the archive publishes where, against what this tool ingests: `python -m flows.catalog`.

    python -m flows.catalog                          # asks data.binance.vision's listing
    python -m flows.catalog --market um --listing-url http://127.0.0.1:8080/listing

One line per market, granularity and dataset folder: `supported` (declared here and listed),
`not listed` (declared here, but the listing has no such folder: a run would find nothing),
`not supported` (listed, not ingested by this tool). Reads the listing only; writes nothing.
Exit 0; 1 when a listing could not be read (named on stderr); 2 for bad arguments; 130 on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from tasks.preflight import version_line
from tasks.settings import DEFAULT_LISTING_URL, CliParser
from tasks.source.archive_spec import MARKETS


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry (see the module)."""
    p = CliParser(prog="python -m flows.catalog", description=__doc__.splitlines()[0])
    p.add_argument("--market", choices=MARKETS, action="append", default=None, help="repeatable; default all")
    p.add_argument("--listing-url", default=DEFAULT_LISTING_URL, help="the bucket listing's URL")
    p.add_argument("--retries", type=int, choices=range(0, 11), default=4, metavar="0..10",
                   help="retries of a failed listing request, with backoff (default 4)")
    p.add_argument("--version", action="version", version=version_line(), help="print the version and exit")
    args = p.parse_args(argv)
    from tasks.source.catalog import read_catalog
    from tasks.source.http import HttpOptions

    http = HttpOptions(retries=args.retries)
    try:  # asyncio.run cancels its task on Ctrl-C and then raises KeyboardInterrupt
        catalog = asyncio.run(read_catalog(args.listing_url, http, tuple(args.market or MARKETS)))
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    print("market\tgranularity\tdataset\tverdict\tnote")
    for r in catalog.rows:
        print(f"{r.market}\t{r.granularity}\t{r.folder}\t{r.verdict}\t{r.note}")
    for (market, granularity), reason in catalog.errors.items():
        print(f"error: {market} {granularity}: the listing could not be read: {reason}", file=sys.stderr)
    return 1 if catalog.errors else 0


if __name__ == "__main__":
    sys.exit(main())
