"""How sizes and durations read in the CLI's plan and progress lines."""

from __future__ import annotations


def format_bytes(n: float) -> str:
    """Decimal units as a download shows them: `310 MB`, `1.2 GB`, `512 B`."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


def format_seconds(s: float) -> str:
    """`19 s`, `2 min 5 s`, `1 h 3 min`."""
    s = max(s, 0.0)
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    minutes, seconds = divmod(int(s), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def plural(n: int, word: str) -> str:
    """`1 day`, `3 days`, `1,234 days`."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")
