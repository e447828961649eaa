"""Reading untrusted zip and tar archives safely, one member at a time, without extracting anything.

Shared by ``POST /datasets`` and ``POST /colorize/batch``. The archive type is found from the
content (tar magic, gzip/bzip2/xz magic, zip end record), never from a file name. Limits hold
whatever the archive declares:

- entries: a zip's central directory is sized from its end record *before* zipfile parses it, and
  its real entry count is checked; a tar's entries are counted as they are read.
- unpacked bytes: every zip member byte actually read is counted against one budget (its declared
  size is never trusted; zipfile itself stops at the declared size and then fails its CRC check).
  A tar member's size is charged when its header is read, wanted or not, because the stream holds
  exactly that many bytes and skipping them decompresses them all the same; and a compressed tar's
  whole decompressed stream is capped too, headers included.
- tar extended headers (pax, GNU long names) larger than ``MAX_TAR_HEADER_BYTES`` are refused
  before tarfile reads them into memory.

Member names are turned into safe relative paths (``safe_path``) or refused: absolute paths,
``..``, drive letters and backslash tricks never reach the file system. Links, devices and
directories are reported as such, never followed or created.
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from service.errors import ApiError

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# pax and GNU long-name headers carry names and metadata: a few KB in practice.
MAX_TAR_HEADER_BYTES = 1024 * 1024
# A zip central directory record is 46 bytes plus name, extra field and comment; real archives
# stay far below this average, and the bound keeps zipfile from parsing a huge directory.
MAX_CENTRAL_DIRECTORY_BYTES_PER_ENTRY = 1024
# Per tar member: a 512-byte header (two with a long name or pax header) and up to 511 bytes of padding.
TAR_OVERHEAD_PER_ENTRY = 2048
MAX_PATH_DEPTH = 32
MAX_NAME_BYTES = 255

EntryKind = Literal["file", "dir", "link", "special"]
ArchiveType = Literal["zip", "tar"]


class ArchiveLimitExceeded(ApiError):
    """The archive breaks a limit that applies to the whole upload (413)."""

    def __init__(self, detail: str):
        super().__init__(413, detail)


class EntryTooLarge(Exception):
    """One member is larger than the per-member limit (the rest of the archive is still usable)."""


class EntryUnreadable(Exception):
    """One member cannot be read: bad CRC, unsupported compression, encrypted."""


def damaged_archive(reason: object) -> ApiError:
    return ApiError(400, f"the archive is damaged or truncated ({reason}): send the whole file again")


def not_an_archive() -> ApiError:
    return ApiError(
        415, "the upload is not a zip or tar archive (plain, .tar.gz, .tar.bz2 or .tar.xz): send one of those"
    )


class UnpackBudget:
    """Bytes that may still be unpacked from one archive; ``take`` raises ArchiveLimitExceeded past it."""

    def __init__(self, limit: int, setting: str = "COLORIZER_MAX_UNPACKED_BYTES"):
        self.limit = limit
        self.used = 0
        self.setting = setting

    def take(self, count: int) -> None:
        self.used += count
        if self.used > self.limit:
            raise ArchiveLimitExceeded(
                f"the archive unpacks to more than {self.limit} bytes ({self.setting}): "
                "send fewer or smaller files"
            )


def safe_path(name: str) -> str | None:
    """``name`` as a relative POSIX path that stays inside the extraction folder, or None.

    Backslashes count as separators (a Windows client would treat them so). ``.`` components are
    dropped (``tar -czf photos.tar.gz -C folder .`` stores ``./a.jpg``). An absolute path, a drive
    letter (``C:``), an empty or ``..`` component, a control character, a component over 255 bytes
    or more than 32 levels is refused rather than repaired.
    """
    if not name or name.startswith(("/", "\\")):
        return None
    parts = name.replace("\\", "/").split("/")
    if parts and parts[-1] == "":  # "folder/" is a directory entry: its trailing slash is fine
        parts.pop()
    parts = [part for part in parts if part != "."]
    if not parts or len(parts) > MAX_PATH_DEPTH:
        return None
    for part in parts:
        if (
            part in ("", ".", "..")
            or ":" in part
            or len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES
        ):
            return None
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in part):
            return None
    return "/".join(parts)


def is_hidden(path: str) -> bool:
    """True for dot files and folders and macOS resource forks (``__MACOSX/``, ``._photo.jpg``)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in path.split("/"))


@dataclass
class Entry:
    """One archive member: its stored name, its safe path (None if unsafe), kind and declared size."""

    name: str
    path: str | None
    kind: EntryKind
    declared_size: int
    _open: Callable[[], IO[bytes]]
    # A tar member's size is charged to the budget when its header is read (see _tar_entries).
    precharged: bool = False

    def chunks(self, budget: UnpackBudget, limit: int | None = None) -> Iterator[bytes]:
        """The member's bytes, chunk by chunk, each counted against ``budget`` as it is read.

        Raises ArchiveLimitExceeded (the budget), EntryTooLarge past ``limit`` bytes, EntryUnreadable.
        """
        read = 0
        try:
            with self._open() as member:
                while True:
                    chunk = member.read(CHUNK)
                    if not chunk:
                        return
                    read += len(chunk)
                    if not self.precharged:
                        budget.take(len(chunk))
                    if limit is not None and read > limit:
                        raise EntryTooLarge(f"larger than {limit} bytes")
                    yield chunk
        except (
            zipfile.BadZipFile,
            zlib.error,
            lzma.LZMAError,
            EOFError,
            NotImplementedError,
            RuntimeError,
        ) as exc:
            # A bad CRC, a member cut short, unsupported compression, an encrypted member.
            raise EntryUnreadable(str(exc) or type(exc).__name__) from exc

    def read(self, budget: UnpackBudget, limit: int) -> bytes:
        """The whole member (at most ``limit`` bytes, else EntryTooLarge); raises like ``chunks``."""
        return b"".join(self.chunks(budget, limit))


class _CountingReader(io.RawIOBase):
    """A read-only stream that raises ArchiveLimitExceeded after ``limit`` bytes (a decompressed tar)."""

    def __init__(self, source: IO[bytes], limit: int, setting: str):
        self.source = source
        self.limit = limit
        self.count = 0
        self.setting = setting

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.count += len(data)
        if self.count > self.limit:
            raise ArchiveLimitExceeded(
                f"the archive unpacks to more than {self.limit} bytes ({self.setting}): "
                "send fewer or smaller files"
            )
        return data

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


_EXTENDED_HEADER_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized pax / GNU long-name headers before tarfile reads them whole."""

    def _proc_member(self, tarfile_obj: tarfile.TarFile):  # noqa: ANN202 - tarfile's own hook
        if self.type in _EXTENDED_HEADER_TYPES and self.size > MAX_TAR_HEADER_BYTES:
            raise tarfile.ReadError(f"an extended tar header of {self.size} bytes")
        return super()._proc_member(tarfile_obj)


def sniff(path: Path) -> tuple[ArchiveType, str | None]:
    """("zip" or "tar", compression of a tar: "gz", "bz2", "xz" or None), from the content.

    Raises ApiError 400 for an empty file, 415 when it is neither.
    """
    with open(path, "rb") as file:
        head = file.read(512)
    if not head:
        raise ApiError(400, "the upload is empty: send a zip or tar archive of photographs")
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar", None
    if head.startswith(b"\x1f\x8b"):
        return "tar", "gz"
    if head.startswith(b"BZh"):
        return "tar", "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "tar", "xz"
    if zipfile.is_zipfile(path):
        return "zip", None
    if head.startswith(b"PK\x03\x04"):
        raise damaged_archive("a zip without its central directory")
    if len(head) >= 512:
        try:  # an old (v7) tar has no magic: let tarfile judge its first header
            tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
            return "tar", None
        except tarfile.HeaderError:
            pass
    raise not_an_archive()


class ArchiveReader:
    """Iterate an archive's members safely (see the module doc); use as a context manager.

    ``entries()`` yields Entry objects; read each one's data (``chunks``/``read``) before asking
    for the next, because a tar is read as a stream. Raises ArchiveLimitExceeded (413) past
    ``max_entries`` or ``max_unpacked_bytes``, ApiError 400 for a damaged archive, 415 for
    something that is not an archive.
    """

    def __init__(self, path: Path, *, max_entries: int, max_unpacked_bytes: int):
        self.path = Path(path)
        self.max_entries = max_entries
        self.budget = UnpackBudget(max_unpacked_bytes)
        self.kind, self.compression = sniff(self.path)
        self._file: IO[bytes] | None = None
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None

    def __enter__(self) -> ArchiveReader:
        try:
            if self.kind == "zip":
                self._open_zip()
            else:
                self._open_tar()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for closable in (self._zip, self._tar, self._file):
            if closable is not None:
                try:
                    closable.close()
                except Exception:  # closing a broken stream must not hide the real error
                    log.debug("closing an archive failed", exc_info=True)
        self._zip = self._tar = self._file = None

    def _too_many(self) -> ArchiveLimitExceeded:
        return ArchiveLimitExceeded(
            f"the archive has more than {self.max_entries} entries (COLORIZER_MAX_ARCHIVE_ENTRIES): "
            "send fewer files"
        )

    def _open_zip(self) -> None:
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        # zipfile reads the whole central directory into memory when it opens: size it first.
        try:
            end = zipfile._EndRecData(self._file)  # noqa: SLF001 - the stdlib's own end-record reader
        except OSError as exc:
            raise damaged_archive(exc) from exc
        if end is None:
            raise damaged_archive("no zip end record")
        if end[zipfile._ECD_ENTRIES_TOTAL] > self.max_entries:  # noqa: SLF001
            raise self._too_many()
        if end[zipfile._ECD_SIZE] > self.max_entries * MAX_CENTRAL_DIRECTORY_BYTES_PER_ENTRY:  # noqa: SLF001
            raise self._too_many()
        try:
            self._zip = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise damaged_archive(exc) from exc
        if len(self._zip.infolist()) > self.max_entries:
            raise self._too_many()

    def _open_tar(self) -> None:
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        source: IO[bytes] = self._file
        if self.compression == "gz":
            source = gzip.GzipFile(fileobj=self._file, mode="rb")
        elif self.compression == "bz2":
            source = bz2.BZ2File(self._file, mode="rb")
        elif self.compression == "xz":
            source = lzma.LZMAFile(self._file, mode="rb")
        # Everything tarfile reads, skipped members included, is counted: headers and padding get
        # a fixed allowance per entry on top of the unpacked-bytes budget.
        limit = self.budget.limit + TAR_OVERHEAD_PER_ENTRY * (self.max_entries + 2)
        counted = _CountingReader(source, limit, self.budget.setting)
        try:
            self._tar = tarfile.open(fileobj=counted, mode="r|", tarinfo=_BoundedTarInfo)  # type: ignore[call-overload]
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            if self.compression is None:
                raise not_an_archive() from exc
            raise damaged_archive(exc) from exc

    def count_files(self) -> int | None:
        """The number of non-directory members when known before reading (zip), else None (tar)."""
        if self._zip is None:
            return None
        return sum(1 for info in self._zip.infolist() if not info.is_dir())

    def member_names(self) -> list[str]:
        """Every member's stored name, whatever ``entries()`` has read so far: a zip's from its central
        directory, a tar's from a pass of its own over the headers (a tar has no directory: the pass
        reads, and decompresses, the stream once more from its start, within the same limits). A tar
        that pass cannot read to the end gives the names before the fault; ``entries()`` then reports
        the fault itself."""
        if self._zip is not None:
            return [info.filename for info in self._zip.infolist()]
        names: list[str] = []
        try:
            with ArchiveReader(
                self.path, max_entries=self.max_entries, max_unpacked_bytes=self.budget.limit
            ) as headers:
                names.extend(entry.name for entry in headers.entries())
        except Exception:  # any fault is the reading's to report, with its own status
            log.debug("reading a tar's member names stopped early", exc_info=True)
        return names

    def entries(self) -> Iterator[Entry]:
        """Each member in archive order (see the class doc for what it raises)."""
        if self._zip is not None:
            yield from self._zip_entries(self._zip)
        elif self._tar is not None:
            yield from self._tar_entries(self._tar)

    def _zip_entries(self, archive: zipfile.ZipFile) -> Iterator[Entry]:
        for info in archive.infolist():
            mode = info.external_attr >> 16
            if info.is_dir():
                kind: EntryKind = "dir"
            elif stat.S_ISLNK(mode):
                kind = "link"
            elif mode and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                kind = "special"
            else:
                kind = "file"

            def opener(info: zipfile.ZipInfo = info) -> IO[bytes]:
                if info.flag_bits & 0x1:
                    raise EntryUnreadable("it is encrypted")
                try:
                    return archive.open(info)
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError) as exc:
                    raise EntryUnreadable(str(exc)) from exc

            yield Entry(info.filename, safe_path(info.filename), kind, info.file_size, opener)

    def _tar_entries(self, archive: tarfile.TarFile) -> Iterator[Entry]:
        count = 0
        while True:
            try:
                member = archive.next()
            except ArchiveLimitExceeded:
                raise
            except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
                raise damaged_archive(exc) from exc
            if member is None:
                return
            count += 1
            if count > self.max_entries:
                raise self._too_many()
            # A tar member's data is exactly its declared size, read (or skipped, which decompresses
            # it just the same) whether or not it is wanted: charge it now, before any of it is read.
            self.budget.take(member.size)
            if member.isdir():
                kind: EntryKind = "dir"
            elif member.issym() or member.islnk():
                kind = "link"
            elif member.isreg():
                kind = "file"
            else:  # devices, fifos
                kind = "special"

            def opener(member: tarfile.TarInfo = member) -> IO[bytes]:
                extracted = archive.extractfile(member)
                if extracted is None:
                    raise EntryUnreadable("it is not a regular file")
                return _TarMember(extracted)

            yield Entry(member.name, safe_path(member.name), kind, member.size, opener, precharged=True)


class _TarMember(io.RawIOBase):
    """A tar member's stream whose read errors mean a damaged archive, not a damaged member:
    in a tar stream nothing after a broken member can be trusted."""

    def __init__(self, source: IO[bytes]):
        self.source = source

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self.source.read(size)
        except ArchiveLimitExceeded:
            raise
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise damaged_archive(exc) from exc

    def close(self) -> None:
        self.source.close()
        super().close()
