"""The project's version, from its one source: `pyproject.toml` (`binance-lake 0.1.0`).

Read once, when a CLI answers `--version`; an installed copy without the file asks the
package metadata instead.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def read_version() -> str:
    """`[project] version` of pyproject.toml, or the installed distribution's version."""
    try:
        return str(tomllib.loads(PYPROJECT.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        try:
            return metadata.version("binance-lake")
        except metadata.PackageNotFoundError:
            return "unknown"


__version__ = read_version()
