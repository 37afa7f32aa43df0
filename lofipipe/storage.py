"""The one storage helper: fsspec URLs, atomic commits, sorted listings, redacted errors.

Every read and write of lofipipe goes through `Store`. A write is staged (a temporary file
beside the target on local disk, a local spool for object stores) and committed only when
the writer finished without an exception, so no reader ever sees a half-written object
under its final name.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import IO, Any

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
            raise StorageError(f"storage option {name.strip() or '(no name)'}: expected "
                               f"key=value")
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

    def __post_init__(self):
        url = self.url if "://" in self.url else os.path.abspath(self.url)
        object.__setattr__(self, "url", url.rstrip("/") or "/")

    def __getstate__(self):
        # The filesystem object is rebuilt in each process; only the URL and options travel.
        return {"url": self.url, "options": dict(self.options)}

    def __setstate__(self, state):
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

    @contextlib.contextmanager
    def _errors(self, action: str, relpath: str) -> Iterator[None]:
        try:
            yield
        except (StorageError, FileNotFoundError):
            raise
        except Exception as error:  # noqa: BLE001 - botocore, aiohttp, gcsfs... raise their own
            where = self.url_of(relpath)
            raise StorageError(f"cannot {action} {where}: {self._clean(error)}") from None

    # Reading -------------------------------------------------------------------------------

    def _forget_listings(self) -> None:
        """Other processes (Ray workers, other drivers) write here: an object store's
        client must not answer from listings it cached before they did. fsspec forgets a
        path and its parents but not the folders below, so all of them go."""
        if not self.is_local:
            self.fs.invalidate_cache()

    def exists(self, relpath: str) -> bool:
        with self._errors("check", relpath):
            self._forget_listings()
            return self.fs.exists(self.path(relpath))

    def open(self, relpath: str, mode: str = "rb") -> IO:
        """Opens an existing object for reading."""
        if "r" not in mode:
            raise ValueError("Store.open is for reading; use Store.writer to write")
        with self._errors("read", relpath):
            self._forget_listings()
            return self.fs.open(self.path(relpath), mode)

    def read_bytes(self, relpath: str) -> bytes:
        with self._errors("read", relpath):
            self._forget_listings()
            return self.fs.cat_file(self.path(relpath))

    def read_text(self, relpath: str) -> str:
        return self.read_bytes(relpath).decode("utf-8")

    def read_table(self, relpath: str, columns: list[str] | None = None) -> pa.Table:
        with self._errors("read", relpath), self.open_arrow(relpath) as handle:
            return pq.read_table(handle, columns=columns)

    def open_arrow(self, relpath: str):
        """Opens an object for reading by pyarrow: a native (memory-mapped) file when local,
        which pyarrow reads without going through Python for every block."""
        if self.is_local:
            with self._errors("read", relpath):
                return pa.memory_map(self.path(relpath))
        return self.open(relpath)

    def info(self, relpath: str = "") -> dict[str, Any]:
        with self._errors("stat", relpath):
            self._forget_listings()
            return self.fs.info(self.path(relpath))

    def list(self, relpath: str = "", pattern: str | None = None,
             recursive: bool = False) -> list[str]:
        """Sorted paths of the files below `relpath`, relative to the root.

        `pattern` is a glob matched against the file name.
        """
        return [path for path, _ in self.list_detailed(relpath, pattern, recursive)]

    def list_detailed(self, relpath: str = "", pattern: str | None = None,
                      recursive: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """Like `list`, with each file's fsspec info (size, mtime or ETag)."""
        base = self.path(relpath)
        with self._errors("list", relpath):
            self._forget_listings()
            if not self.fs.isdir(base):
                return []
            found = self.fs.find(base, maxdepth=None if recursive else 1, detail=True)
        prefix = self.path().rstrip("/") + "/"
        out = []
        for path, info in found.items():
            if info.get("type") == "directory":
                continue
            name = path.rsplit("/", 1)[-1]
            if pattern and not fnmatch.fnmatch(name, pattern):
                continue
            out.append((path[len(prefix):] if path.startswith(prefix) else path, info))
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
                    prefix=f".{os.path.basename(target)}.", suffix=_STAGED_SUFFIX,
                    dir=directory)
            try:
                with os.fdopen(fd, "wb") as handle:
                    yield handle
                    handle.flush()
                    os.fsync(handle.fileno())
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
            spool.seek(0)
            with self._errors("write", relpath):
                if size <= _SINGLE_PUT_BYTES:
                    self.fs.pipe_file(target, spool.read())
                else:
                    with tempfile.NamedTemporaryFile() as staged:
                        shutil.copyfileobj(spool, staged)
                        staged.flush()
                        self.fs.put_file(staged.name, target)

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

    def write_table(self, relpath: str, table: pa.Table, row_group_size: int | None = None
                    ) -> None:
        """Writes a Parquet file (readable by pyarrow, fastparquet, pandas and duckdb)."""
        with self.writer(relpath) as handle:
            pq.write_table(table, handle, compression="zstd", row_group_size=row_group_size)

    def remove(self, relpath: str) -> None:
        with self._errors("remove", relpath), contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(relpath))


_GLOB_CHARS = re.compile(r"[*?\[]")


def list_files(url: str, options: Mapping[str, Any], extensions: Iterable[str]
               ) -> list[tuple[str, dict[str, Any]]]:
    """Files under a folder URL (recursively), matching a glob URL, or one file, with info.

    Only names ending in one of `extensions` (case-insensitive) are kept; the result is
    sorted by URL so that work is split deterministically.
    """
    suffixes = tuple("." + ext.lower().lstrip(".") for ext in extensions)
    if _GLOB_CHARS.search(url.split("://", 1)[-1]):
        pattern = url if "://" in url else os.path.abspath(url)
        fixed_prefix = pattern[: _GLOB_CHARS.search(pattern).start()]
        store = Store(fixed_prefix.rpartition("/")[0] or "/", options)
        with store._errors("list", ""):
            found = store.fs.glob(store.fs._strip_protocol(pattern), detail=True)
        items = [(store.url_for_path(path), info) for path, info in found.items()
                 if info.get("type") != "directory"]
    else:
        store = Store(url, options)
        if not store.exists(""):
            raise NotFoundError(f"no such folder or file: {redact(store.url, options)}")
        with store._errors("list", ""):
            if store.fs.isfile(store.path()):
                found = {store.path(): store.fs.info(store.path())}
            else:
                found = store.fs.find(store.path(), detail=True)
        items = [(store.url_for_path(path), info) for path, info in found.items()
                 if info.get("type") != "directory"]
    return sorted((u, info) for u, info in items if u.lower().endswith(suffixes))
