"""Numba kernels of the CSV parser's fast path: plain lines of integers, decimals and booleans.

`tasks.convert.csv_parse.parse_simple_piece` calls them; anything they do not cover they
report (-1) and pyarrow parses the piece instead. Column kinds: `INT`, `FLOAT`, `BOOL`,
and `SKIP` (a field not kept, such as klines' `ignore`: any bytes up to the next comma
or line end).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numba
import numpy as np

INT, FLOAT, BOOL, SKIP = 0, 1, 2, 3


def _line_count(buf: np.ndarray[Any, Any]) -> int:  # pragma: no cover - compiled by numba
    """The most rows `buf` can hold: its line ends, plus one for a last line without one."""
    count = 1
    for i in range(buf.shape[0]):
        if buf[i] == 10:
            count += 1
    return count


def _simple_rows(
    buf: np.ndarray[Any, Any],
    kinds: np.ndarray[Any, Any],
    ints: tuple[np.ndarray[Any, Any], ...],
    floats: tuple[np.ndarray[Any, Any], ...],
    bools: tuple[np.ndarray[Any, Any], ...],
) -> int:  # pragma: no cover - compiled by numba
    """Parse the lines of `buf` into the columns `ints`, `floats`, `bools`; return the rows, -1 if not simple.

    `kinds` gives each column's kind in order (`INT`, `FLOAT`, `BOOL`, `SKIP`); `ints`,
    `floats` and `bools` are tuples of one array per column of that kind, each of
    `_line_count(buf)` items. Simple means
    every line has exactly these columns and ends with `\\n`, `\\r\\n` or the end of
    `buf`, integers are 1-18 plain digits, decimals are `digits[.digits]` with at most 17
    digits and a value of at most 2**53 units of the last digit, booleans are spelt
    `True`/`true`/`False`/`false`. Such a decimal is m / 10**k with m and 10**k exact
    doubles, so the one IEEE division gives the correctly rounded double, the same as
    pyarrow's parser. Anything else (signs, exponents, empty fields, empty lines) gives
    -1 and pyarrow parses the piece instead.
    """
    n = buf.shape[0]
    capacity = ints[0].shape[0]
    ncols = kinds.shape[0]
    pos = 0
    row = 0
    while pos < n:
        if row >= capacity:
            return -1  # cannot happen with `_line_count(buf)` items; bounds are not checked
        i_col = 0
        f_col = 0
        b_col = 0
        for col in range(ncols):
            kind = kinds[col]
            if kind == 0:
                value = 0
                start = pos
                while pos < n and 48 <= buf[pos] <= 57:
                    value = value * 10 + (buf[pos] - 48)
                    pos += 1
                if pos == start or pos - start > 18:
                    return -1
                ints[i_col][row] = value
                i_col += 1
            elif kind == 1:
                units = 0
                start = pos
                while pos < n and 48 <= buf[pos] <= 57:
                    units = units * 10 + (buf[pos] - 48)
                    pos += 1
                digits = pos - start
                decimals = 0
                if pos < n and buf[pos] == 46:
                    pos += 1
                    start = pos
                    while pos < n and 48 <= buf[pos] <= 57:
                        units = units * 10 + (buf[pos] - 48)
                        pos += 1
                    decimals = pos - start
                    if decimals == 0:
                        return -1
                if digits == 0 or digits + decimals > 17 or units > 9007199254740992:
                    return -1
                floats[f_col][row] = units / 10.0**decimals
                f_col += 1
            elif kind == 3:
                while pos < n and buf[pos] != 44 and buf[pos] != 10 and buf[pos] != 13:
                    pos += 1
            else:
                if pos + 4 <= n and (buf[pos] == 84 or buf[pos] == 116) and buf[pos + 1] == 114:
                    if buf[pos + 2] != 117 or buf[pos + 3] != 101:
                        return -1
                    bools[b_col][row] = True
                    pos += 4
                elif pos + 5 <= n and (buf[pos] == 70 or buf[pos] == 102) and buf[pos + 1] == 97:
                    if buf[pos + 2] != 108 or buf[pos + 3] != 115 or buf[pos + 4] != 101:
                        return -1
                    bools[b_col][row] = False
                    pos += 5
                else:
                    return -1
                b_col += 1
            if col < ncols - 1:
                if pos >= n or buf[pos] != 44:
                    return -1
                pos += 1
        if pos < n and buf[pos] == 13:
            pos += 1
            if pos >= n:
                return -1  # a lone carriage return at the end
        if pos < n:
            if buf[pos] != 10:
                return -1
            pos += 1
        row += 1
    return row


#: The kernels compiled (numba, cached on disk; nogil, so the read-ahead thread runs beside them).
line_count = cast(Callable[..., int], numba.njit(cache=True, nogil=True)(_line_count))
simple_rows = cast(Callable[..., int], numba.njit(cache=True, nogil=True, boundscheck=False)(_simple_rows))
