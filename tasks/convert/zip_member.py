"""A Binance archive's one CSV member: checked, opened and inflated, never extracted by name.

What a ZIP may throw at us: corrupt or unsupported archives (#435, #469), several
members, unsafe member names, encrypted members, a local header that disagrees with the
central directory. Each is `CorruptArchive` or `UnsafePath` naming the archive before
anything is parsed; CRC errors show up only at the end of the member
(`inflate_member` checks size and CRC-32 once the stream has ended).
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from collections.abc import Generator
from pathlib import Path, PurePosixPath
from typing import IO, cast

from isal import igzip_lib, isal_zlib

from tasks.errors import CorruptArchive, UnsafePath

#: Exceptions of zipfile / zlib that mean the archive bytes are bad (CRC, truncation, garbling).
ZIP_ERRORS: tuple[type[BaseException], ...] = (zipfile.BadZipFile, zlib.error, EOFError)
#: Compressed bytes read from the archive at a time, at most and at least.
_ZIP_READ_BYTES = 1 << 20
_MIN_ZIP_READ_BYTES = 1 << 16
#: A ZIP local file header: the general-purpose flags, then the name and extra-field lengths.
_LOCAL_HEADER = struct.Struct("<6xH18xHH")
_LOCAL_HEADER_MAGIC = b"PK\x03\x04"
_UTF8_NAME_FLAG = 0x800
#: Compressed patched data (bit 5) and strong encryption (bit 6): zipfile refuses them too.
_UNSUPPORTED_FLAGS = 0x60
#: What ISA-L raises on a broken DEFLATE stream (its stub types it as an instance).
_INFLATE_ERROR = cast("type[BaseException]", igzip_lib.IsalError)
_DRIVE = re.compile(r"^[A-Za-z]:")


def check_member_name(name: str, source: str) -> None:
    """Raise UnsafePath if a ZIP member name could escape a folder (`..`, absolute, `\\`, drive)."""
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or "\\" in name or _DRIVE.match(name) or ".." in parts or "\x00" in name:
        raise UnsafePath(source, f"unsafe ZIP member name {name!r}")


def single_member(zf: zipfile.ZipFile, source: str) -> zipfile.ZipInfo:
    """The one CSV member of a Binance archive; CorruptArchive/UnsafePath for anything else."""
    infos = zf.infolist()
    for info in infos:
        check_member_name(info.filename, source)
    if not infos:
        raise CorruptArchive(source, "the ZIP holds no member")
    if len(infos) > 1:
        names = ", ".join(repr(i.filename) for i in infos[:5])
        raise CorruptArchive(source, f"the ZIP holds {len(infos)} members, expected one CSV: {names}")
    info = infos[0]
    if info.is_dir():
        raise CorruptArchive(source, f"the only member {info.filename!r} is a folder")
    if info.flag_bits & 0x1:
        raise CorruptArchive(source, f"member {info.filename!r} is encrypted")
    return info


def open_zip(zip_path: Path, source: str) -> zipfile.ZipFile:
    """The archive as a ZipFile; CorruptArchive when it is not a readable ZIP."""
    try:
        return zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:  # not a ZIP at all, or its central directory is cut (#435)
        raise CorruptArchive(source, f"not a readable ZIP: {exc}") from exc


def open_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> IO[bytes]:
    """Open the member as a stream (never extracted by name); unsupported methods are CorruptArchive."""
    try:
        return zf.open(info)
    except NotImplementedError as exc:  # e.g. Deflate64 (#469)
        raise CorruptArchive(source, f"{info.filename}: unsupported ZIP: {exc}") from exc


def inflate_member(
    zip_path: Path, info: zipfile.ZipInfo, chunk_bytes: int, source: str
) -> Generator[bytes, None, None]:
    """Yield the bytes of member `info` of `zip_path`, in chunks of at most `chunk_bytes`.

    The compressed bytes are read straight from the file (the local header's offset comes
    from the central directory) and inflated with ISA-L (python-isal), about twice as fast
    as zlib here: raw DEFLATE or STORED only. Once the stream has ended, its size and
    CRC-32 are checked against the central directory. Bad bytes (CRC, truncation, a broken
    DEFLATE stream, a local header that does not match) and unsupported methods raise
    CorruptArchive naming the archive and the member.
    """
    name = info.filename
    method = info.compress_type
    if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & _UNSUPPORTED_FLAGS:
        raise CorruptArchive(source, f"{name}: unsupported ZIP: compression method {method} is not supported")
    with open(zip_path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size or not header.startswith(_LOCAL_HEADER_MAGIC):
            raise CorruptArchive(source, f"{name}: BadZipFile: bad magic number for the member's local header")
        flags, name_bytes, extra_bytes = _LOCAL_HEADER.unpack(header)
        raw_name = fh.read(name_bytes)
        local_name = raw_name.decode("utf-8" if flags & _UTF8_NAME_FLAG else "cp437", "replace")
        if local_name != info.orig_filename:
            raise CorruptArchive(
                source, f"{name}: BadZipFile: file name in directory {name!r} and header {local_name!r} differ"
            )
        fh.seek(extra_bytes, 1)
        left = info.compress_size
        crc = size = 0

        def read(limit: int) -> bytes:
            nonlocal left
            want = min(limit, left)
            data = fh.read(want)
            if len(data) < want:
                raise CorruptArchive(source, f"{name}: EOFError: the compressed data is truncated")
            left -= want
            return data

        if method == zipfile.ZIP_STORED:
            while left:
                data = read(chunk_bytes)
                crc, size = isal_zlib.crc32(data, crc), size + len(data)
                yield data
        else:
            inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_DEFLATE)
            # About a chunk's worth (CSV deflates 3-5x): the inflater buffers what it has not used.
            read_bytes = max(_MIN_ZIP_READ_BYTES, min(_ZIP_READ_BYTES, chunk_bytes // 4))
            while not inflater.eof:
                if inflater.needs_input and not left:
                    raise CorruptArchive(
                        source, f"{name}: EOFError: the compressed data ended before the end-of-stream marker"
                    )
                data = read(read_bytes) if inflater.needs_input else b""
                try:
                    out = inflater.decompress(data, chunk_bytes)
                except _INFLATE_ERROR as exc:
                    raise CorruptArchive(source, f"{name}: {type(exc).__name__}: {exc}") from exc
                if out:
                    crc, size = isal_zlib.crc32(out, crc), size + len(out)
                    if size > info.file_size:
                        break  # reported below: more bytes than the central directory says
                    yield out
    if size != info.file_size:
        raise CorruptArchive(source, f"{name}: BadZipFile: inflated to {size} bytes, the ZIP says {info.file_size}")
    if crc != info.CRC:
        raise CorruptArchive(source, f"{name}: BadZipFile: Bad CRC-32 for file {name!r}")


def check_member_crc(zip_path: Path, info: zipfile.ZipInfo, source: str) -> None:
    """Inflate the whole member (streaming) and raise CorruptArchive if it does not inflate or its CRC fails."""
    for _ in inflate_member(zip_path, info, 1 << 20, source):
        pass
