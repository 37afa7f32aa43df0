"""The one storage helper: fsspec URLs, atomic commits, sorted listings, redacted errors.

Every read and write of lofipipe goes through `Store`. A write is staged (a temporary file
beside the target on local disk, a local spool for object stores) and committed only when
the writer finished without an exception, so no reader ever sees a half-written object
under its final name. An object store's transient failures (a refused or reset connection,
a timeout, throttling: the service restarting) are retried with backoff for up to
LOFIPIPE_STORAGE_RETRY_S seconds (default 120) before they become errors.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fnmatch
import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import IO, Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from lofipipe.errors import NotFoundError, StorageError, one_line

# Storage option names whose values are credentials. Matched as substrings, lower case.
_SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "key")
_PUBLIC_OPTIONS = {"endpoint_url", "region_name", "anon", "use_ssl", "profile"}
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
REDACTED = "***"
# Objects up to this size are committed with one PUT; larger ones by a multipart upload,
# which object stores also make visible only when it completes.
_SINGLE_PUT_BYTES = 64 * 2**20
_STAGED_SUFFIX = ".partial"  # local writes are staged as .<name>.<random>.partial
# FileExpired: the object was replaced between opening and reading it (a worker rewrote
# a run's metrics while the driver read them); reading again gets the whole new version.
_TRANSIENT_NAMES = (
    "Connect",
    "Timeout",
    "Disconnected",
    "IncompleteRead",
    "SlowDown",
    "ServiceUnavailable",
    "ResponseParserError",
    "BrokenPipe",
    "FileExpired",
)
T = TypeVar("T")
# A local write that fails with one of these failed for want of room or rights on the disk.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _retry_seconds() -> float:
    return float(os.environ.get("LOFIPIPE_STORAGE_RETRY_S", "120"))


def is_transient(error: BaseException) -> bool:
    """A failure that may pass if the operation is tried again: the connection, not the
    request (a missing object or refused credentials are not)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, FileNotFoundError | PermissionError):
            return False
        if isinstance(seen, ConnectionError | TimeoutError) or any(
            name in type(seen).__name__ for name in _TRANSIENT_NAMES
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_secret_option(name: str) -> bool:
    """Whether a storage option of this name holds a credential."""
    name = name.lower()
    return name not in _PUBLIC_OPTIONS and any(word in name for word in _SECRET_WORDS)


def _secret_values(options: Mapping[str, Any]) -> list[str]:
    values = []
    for name, value in options.items():
        if isinstance(value, Mapping):
            values += _secret_values(value)
        elif is_secret_option(name) and value not in (None, "", True, False):
            values.append(str(value))
    values += [os.environ[name] for name in _SECRET_ENV if os.environ.get(name)]
    return sorted(set(values), key=len, reverse=True)


def redact(text: str, options: Mapping[str, Any] | None = None) -> str:
    """Replaces every credential from `options` and the environment in `text`."""
    for value in _secret_values(options or {}):
        if len(value) >= 4:
            text = text.replace(value, REDACTED)
    return text


_INTEGER = re.compile(r"^-?(0|[1-9][0-9]*)$")


def _option_value(raw: str) -> Any:
    """`true`/`false`, a plain decimal integer, or the text as it is."""
    text = raw.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _INTEGER.match(text):
        return int(text)
    return raw


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """Parses `key=value` pairs (`client_kwargs.region_name=x` nests) into fsspec options."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            # Never echo the text after "=": it may be a credential.
            raise StorageError(f"storage option {name.strip() or '(no name)'}: expected key=value")
        *parents, leaf = name.strip().split(".")
        value = raw if is_secret_option(leaf) else _option_value(raw)
        node = options
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return options


def join_url(base: str, *parts: str) -> str:
    """Joins path parts onto a URL or path with single slashes."""
    url = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            url = f"{url}/{part}"
    return url


@dataclass(frozen=True)
class Store:
    """A root URL on any fsspec filesystem, with the options (credentials) to reach it.

    Paths given to the methods are relative to the root and use `/`.
    """

    url: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        url = self.url if "://" in self.url else os.path.abspath(self.url)
        object.__setattr__(self, "url", url.rstrip("/") or "/")

    def __getstate__(self) -> dict[str, Any]:
        # The filesystem object is rebuilt in each process; only the URL and options travel.
        return {"url": self.url, "options": dict(self.options)}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        object.__setattr__(self, "url", state["url"])
        object.__setattr__(self, "options", state["options"])

    @cached_property
    def _fs_root(self) -> tuple[fsspec.AbstractFileSystem, str]:
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **self.options)
        except Exception as error:  # bad protocol, missing package, bad option
            raise StorageError(f"cannot open storage {self.url}: {self._clean(error)}") from None
        return fs, root.rstrip("/") or "/"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_root[0]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def child(self, *parts: str) -> Store:
        """The store rooted at a sub-path of this one."""
        return Store(join_url(self.url, *parts), self.options)

    def url_of(self, relpath: str = "") -> str:
        return join_url(self.url, relpath)

    def url_for_path(self, path: str) -> str:
        """The URL of a filesystem path of this store's filesystem (plain path when local)."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def path(self, relpath: str = "") -> str:
        """The filesystem path (no protocol) of `relpath`."""
        return join_url(self._fs_root[1], relpath)

    def _clean(self, error: BaseException) -> str:
        return redact(one_line(error, with_type=True), self.options)

    def _failure(self, action: str, relpath: str, error: BaseException) -> StorageError:
        return StorageError(f"cannot {action} {self.url_of(relpath)}: {self._clean(error)}")

    @contextlib.contextmanager
    def _errors(self, action: str, relpath: str) -> Iterator[None]:
        try:
            yield
        except (StorageError, FileNotFoundError):
            raise
        except Exception as error:  # noqa: BLE001 - botocore, aiohttp, gcsfs... raise their own
            raise self._failure(action, relpath, error) from None

    def _do(self, action: str, relpath: str, operation: Callable[[], T]) -> T:
        """One storage operation, retried while an object store fails transiently."""
        deadline = time.monotonic() + _retry_seconds()
        pause = 0.25
        while True:
            try:
                return operation()
            except (StorageError, FileNotFoundError):
                raise
            except Exception as error:  # noqa: BLE001 - see _errors
                if (
                    self.is_local
                    or not is_transient(error)
                    or (time.monotonic() + pause > deadline)
                ):
                    raise self._failure(action, relpath, error) from None
            time.sleep(pause)
            pause = min(2 * pause, 8.0)

    # Reading -------------------------------------------------------------------------------

    def _forget_listings(self) -> None:
        """Other processes (Ray workers, other drivers) write here: an object store's
        client must not answer from listings it cached before they did. fsspec forgets a
        path and its parents but not the folders below, so all of them go."""
        if not self.is_local:
            self.fs.invalidate_cache()

    def exists(self, relpath: str) -> bool:
        def check() -> bool:
            self._forget_listings()
            return self.fs.exists(self.path(relpath))

        return self._do("check", relpath, check)

    def open(self, relpath: str, mode: str = "rb", **options: Any) -> IO:
        """Opens an existing object for reading (`options`: the filesystem's, as fsspec's
        `cache_type`)."""
        if "r" not in mode:
            raise ValueError("Store.open is for reading; use Store.writer to write")

        def opened() -> IO:
            self._forget_listings()
            return self.fs.open(self.path(relpath), mode, **options)

        return self._do("read", relpath, opened)

    def read_bytes(self, relpath: str) -> bytes:
        def read() -> bytes:
            self._forget_listings()
            return self.fs.cat_file(self.path(relpath))

        return self._do("read", relpath, read)

    def read_text(self, relpath: str) -> str:
        return self.read_bytes(relpath).decode("utf-8")

    def read_table(self, relpath: str, columns: list[str] | None = None) -> pa.Table:
        def read() -> pa.Table:
            with self.open_arrow(relpath) as handle:
                return pq.read_table(handle, columns=columns)

        return self._do("read", relpath, read)

    def open_arrow(self, relpath: str) -> pa.NativeFile | IO[Any]:
        """Opens an object for reading by pyarrow: a native (memory-mapped) file when local,
        which pyarrow reads without going through Python for every block; elsewhere a file
        without read-ahead, each of pyarrow's (coalesced) reads one ranged request, so a
        read of a few row groups does not pull the rest of the object along."""
        if self.is_local:
            with self._errors("read", relpath):
                return pa.memory_map(self.path(relpath))
        return self.open(relpath, cache_type="none")

    def info(self, relpath: str = "") -> dict[str, Any]:
        def stat() -> dict[str, Any]:
            self._forget_listings()
            return self.fs.info(self.path(relpath))

        return self._do("stat", relpath, stat)

    def list(
        self, relpath: str = "", pattern: str | None = None, recursive: bool = False
    ) -> list[str]:
        """Sorted paths of the files below `relpath`, relative to the root.

        `pattern` is a glob matched against the file name.
        """
        return [path for path, _ in self.list_detailed(relpath, pattern, recursive)]

    # `builtins.list`: in the class body from here on, `list` is the method above.
    def list_detailed(
        self, relpath: str = "", pattern: str | None = None, recursive: bool = False
    ) -> builtins.list[tuple[str, dict[str, Any]]]:
        """Like `list`, with each file's fsspec info (size, mtime or ETag)."""
        base = self.path(relpath)

        def find() -> dict[str, dict[str, Any]]:
            self._forget_listings()
            if not self.fs.isdir(base):
                return {}
            return self.fs.find(base, maxdepth=None if recursive else 1, detail=True)

        found = self._do("list", relpath, find)
        prefix = self.path().rstrip("/") + "/"
        out = []
        for path, info in found.items():
            if info.get("type") == "directory":
                continue
            name = path.rsplit("/", 1)[-1]
            if pattern and not fnmatch.fnmatch(name, pattern):
                continue
            out.append((path[len(prefix) :] if path.startswith(prefix) else path, info))
        return sorted(out)

    # Writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, relpath: str) -> Iterator[IO[bytes]]:
        """A binary file whose content appears at `relpath` only if the block succeeds.

        An exception inside the block leaves nothing under the final name (and nothing of
        the staged copy either).
        """
        target = self.path(relpath)
        if self.is_local:
            with self._errors("write", relpath):
                directory = os.path.dirname(target)
                os.makedirs(directory, exist_ok=True)
                fd, staged = tempfile.mkstemp(
                    prefix=f".{os.path.basename(target)}.", suffix=_STAGED_SUFFIX, dir=directory
                )
            try:
                handle = os.fdopen(fd, "wb")
                try:
                    try:
                        yield handle
                        handle.flush()
                        os.fsync(handle.fileno())
                    finally:
                        with contextlib.suppress(OSError):  # flushed above if all went well
                            handle.close()
                except OSError as error:
                    if error.errno not in _DISK_ERRNOS:
                        raise
                    # The disk, not the data: a clear error that stops the stage.
                    raise self._failure("write", relpath, error) from None
                with self._errors("write", relpath):
                    # mkstemp makes the file private; give it the usual umask permissions.
                    os.chmod(staged, 0o666 & ~_umask())
                    os.replace(staged, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staged)
            return
        with tempfile.TemporaryFile() as spool:
            yield spool
            spool.seek(0, io.SEEK_END)
            size = spool.tell()
            if size <= _SINGLE_PUT_BYTES:
                spool.seek(0)
                data = spool.read()
                self._do("write", relpath, lambda: self.fs.pipe_file(target, data))
                return
            with tempfile.NamedTemporaryFile() as upload:
                spool.seek(0)
                shutil.copyfileobj(spool, upload)
                upload.flush()
                self._do("write", relpath, lambda: self.fs.put_file(upload.name, target))

    def clear_staged(self, relpath: str) -> int:
        """Removes the staged copies that killed writers left in a folder; returns how many.

        Only safe while no writer of this folder runs. Object stores stage locally, so
        there is nothing to clear there.
        """
        if not self.is_local:
            return 0
        staged = self.list(relpath, pattern=f".*{_STAGED_SUFFIX}")
        for name in staged:
            self.remove(name)
        return len(staged)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        with self.writer(relpath) as handle:
            handle.write(data)

    def write_text(self, relpath: str, text: str) -> None:
        self.write_bytes(relpath, text.encode("utf-8"))

    def write_table(self, relpath: str, table: pa.Table, row_group_size: int | None = None) -> None:
        """Writes a Parquet file (readable by pyarrow, fastparquet, pandas and duckdb)."""
        with self.writer(relpath) as handle:
            pq.write_table(table, handle, compression="zstd", row_group_size=row_group_size)

    def remove(self, relpath: str) -> None:
        """Removes one file; a file that is not there is fine."""

        def remove_file() -> None:
            # One object, by name: `rm` would first expand the path through the client's
            # listing cache, which may predate the file and then delete nothing.
            self._forget_listings()
            self.fs.rm_file(self.path(relpath))

        with contextlib.suppress(FileNotFoundError):
            self._do("remove", relpath, remove_file)


_GLOB_CHARS = re.compile(r"[*?\[]")


def has_extension(url: str, extensions: Iterable[str]) -> bool:
    """Whether the name at `url` ends in one of `extensions` (case-insensitive)."""
    return url.lower().endswith(tuple("." + ext.lower().lstrip(".") for ext in extensions))


def list_files(
    url: str, options: Mapping[str, Any], extensions: Iterable[str] | None
) -> list[tuple[str, dict[str, Any]]]:
    """Files under a folder URL (recursively), matching a glob URL, or one file, with info.

    Only names ending in one of `extensions` (case-insensitive) are kept, every file with
    None; the result is sorted by URL so that work is split deterministically.
    """
    pattern = url if "://" in url else os.path.abspath(url)
    # abspath drops glob characters in a segment that a `..` removes: a plain path then.
    first_glob = (
        _GLOB_CHARS.search(pattern) if _GLOB_CHARS.search(url.split("://", 1)[-1]) else None
    )
    if first_glob is not None:
        fixed_prefix = pattern[: first_glob.start()]
        store = Store(fixed_prefix.rpartition("/")[0] or "/", options)
        with store._errors("list", ""):
            found = store.fs.glob(store.fs._strip_protocol(pattern), detail=True)
        items = [
            (store.url_for_path(path), info)
            for path, info in found.items()
            if info.get("type") != "directory"
        ]
    else:
        store = Store(url, options)
        if not store.exists(""):
            raise NotFoundError(f"no such folder or file: {redact(store.url, options)}")
        with store._errors("list", ""):
            if store.fs.isfile(store.path()):
                found = {store.path(): store.fs.info(store.path())}
            else:
                found = store.fs.find(store.path(), detail=True)
        items = [
            (store.url_for_path(path), info)
            for path, info in found.items()
            if info.get("type") != "directory"
        ]
    if extensions is None:
        return sorted(items)
    return sorted((u, info) for u, info in items if has_extension(u, extensions))
