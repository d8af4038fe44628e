"""Two ways to hold bytes under a root: a local folder, and any ``pyarrow.fs`` file system.

Both give the same guarantees to ``ShardStore``: ``write_bytes`` is atomic (a reader sees the
old object, the new one, or none — never a part), and ``put_dir`` writes every file before the
``_COMMITTED`` marker.

- ``LocalBackend`` writes a hidden temp file beside the final name, fsyncs it, ``os.replace``\\ s
  it over the final name (atomic on POSIX, NFS included) and fsyncs the folder. A folder is
  copied into a hidden temp folder, marker included, and renamed into place.
- ``FsBackend`` (S3 and S3-compatible stores, GCS) writes each object with one upload to its
  final key: an object store shows an object only once its upload completes. A folder's files
  go first, the marker last; re-committing deletes the marker first, so a reader never takes a
  folder being rewritten for a committed one.

OS errors become ``StorageError`` (local; permanent) or ``TransientError`` (remote, unless the
message says access is denied or the bucket is missing).
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.fs as pafs

from distillq.errors import InvalidInputError, StorageError, TransientError
from storage.layout import HIDDEN

MARKER = "_COMMITTED"
_SWAP_ATTEMPTS = 20
_CHUNK = 1 << 20
_PERMANENT_REMOTE = ("ACCESS_DENIED", "AccessDenied", "NO_SUCH_BUCKET", "NoSuchBucket",
                     "InvalidAccessKeyId", "SignatureDoesNotMatch")


# Object stores show an object only once its upload is complete (see FsBackend).
_OBJECT_STORES = tuple(getattr(pafs, name) for name in ("S3FileSystem", "GcsFileSystem")
                       if hasattr(pafs, name))


class FolderChanged(TransientError):
    """A committed folder was replaced while it was being copied out."""


class Backend(Protocol):
    uri: str
    root: str
    local: bool

    def path(self, key: str) -> str: ...
    def write_bytes(self, key: str, data: Any) -> None: ...
    def read_bytes(self, key: str) -> bytes | None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def names(self, key: str) -> list[str]: ...
    def put_dir(self, src: Path, key: str, token: bytes) -> None: ...
    def copy_dir_out(self, key: str, dest: Path) -> None: ...


def open_backend(uri: str | os.PathLike[str]) -> Backend:
    """A local folder (a path or ``file://``) or any URI ``pyarrow.fs`` understands."""
    text = os.fspath(uri)
    if not text:
        raise InvalidInputError("storage location is empty")
    if "://" not in text:
        return LocalBackend(Path(text))
    try:
        fs, root = pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise InvalidInputError(f"storage {text!r} cannot be opened: {exc}") from None
    if isinstance(fs, pafs.LocalFileSystem):
        return LocalBackend(Path(root))
    if not isinstance(fs, _OBJECT_STORES):
        # a file system that shows a file while it is being written (HDFS) would let readers
        # take a half-written shard for a committed one
        raise InvalidInputError(f"storage {text!r}: {type(fs).__name__} is not supported; use a "
                                "local or mounted folder, s3:// or gs://")
    return FsBackend(fs, root, text)


def _hidden_sibling(path: str, tag: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{HIDDEN}{tag}-{uuid.uuid4().hex[:16]}-{name}")


def _visible(names: list[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith(HIDDEN))


# ---- local -----------------------------------------------------------------------------------

@contextmanager
def _local_errors(path: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StorageError(f"{path}: {exc.strerror or exc}") from exc


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: str, data: Any) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _copy_synced(src: str, dst: str) -> str:
    shutil.copyfile(src, dst)
    _fsync_path(dst)
    return dst


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def swap_in(tmp: str, dest: str) -> None:
    """Rename folder ``tmp`` to ``dest``, moving whatever is at ``dest`` aside first."""
    aside: list[str] = []
    try:
        for _ in range(_SWAP_ATTEMPTS):
            try:
                os.rename(tmp, dest)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
            old = _hidden_sibling(dest, "old")
            try:
                os.rename(dest, old)
                aside.append(old)
            except FileNotFoundError:
                pass  # another writer moved it; try again
        raise TransientError(f"{dest}: could not replace it (other writers kept replacing it)")
    finally:
        for old in aside:
            _remove(old)


class LocalBackend:
    """A folder on this machine (or a mounted shared file system)."""

    local = True

    def __init__(self, root: Path):
        self.root = str(root.expanduser().resolve())
        self.uri = self.root

    def path(self, key: str) -> str:
        return os.path.join(self.root, key) if key else self.root

    def write_bytes(self, key: str, data: Any) -> None:
        path = self.path(key)
        folder = os.path.dirname(path)
        with _local_errors(path):
            os.makedirs(folder, exist_ok=True)
            tmp = _hidden_sibling(path, "tmp")
            try:
                _write_synced(tmp, data)
                os.replace(tmp, path)
            finally:
                if os.path.lexists(tmp):
                    os.remove(tmp)
            _fsync_path(folder)

    def read_bytes(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            with _local_errors(path), open(path, "rb") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def exists(self, key: str) -> bool:
        return os.path.exists(self.path(key))

    def delete(self, key: str) -> None:
        """Remove one file; one that is not there is not an error."""
        path = self.path(key)
        with _local_errors(path):
            try:
                os.remove(path)
            except FileNotFoundError:
                return
            _fsync_path(os.path.dirname(path))

    def names(self, key: str) -> list[str]:
        try:
            return _visible(os.listdir(self.path(key)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def put_dir(self, src: Path, key: str, token: bytes) -> None:
        dest = self.path(key)
        with _local_errors(dest):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            tmp = _hidden_sibling(dest, "tmp")
            try:
                shutil.copytree(src, tmp, ignore=_top_marker(src), copy_function=_copy_synced)
                _write_synced(os.path.join(tmp, MARKER), token)
                swap_in(tmp, dest)
            finally:
                _remove(tmp)
            _fsync_path(os.path.dirname(dest))

    def copy_dir_out(self, key: str, dest: Path) -> None:
        src = self.path(key)
        try:
            shutil.copytree(src, dest, ignore=_top_marker(Path(src)), dirs_exist_ok=True)
        except (FileNotFoundError, shutil.Error) as exc:
            raise FolderChanged(f"{src} changed while it was copied: {exc}") from None


def _top_marker(src: Path) -> Any:
    """A copytree ``ignore`` that skips the marker at the top of ``src`` only."""
    top = os.path.abspath(src)
    return lambda folder, names: [MARKER] if os.path.abspath(folder) == top else []


# ---- pyarrow.fs ------------------------------------------------------------------------------

@contextmanager
def _remote_errors(path: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        text = str(exc)
        if any(marker in text for marker in _PERMANENT_REMOTE):
            raise StorageError(f"{path}: {text}") from exc
        raise TransientError(f"{path}: {text}") from exc


class FsBackend:
    """Any ``pyarrow.fs`` file system: ``s3://bucket/prefix?endpoint_override=...``, ``gs://``."""

    local = False

    def __init__(self, fs: pafs.FileSystem, root: str, uri: str):
        self.fs, self.root, self.uri = fs, root.rstrip("/"), uri

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def write_bytes(self, key: str, data: Any) -> None:
        path = self.path(key)
        with _remote_errors(path), self.fs.open_output_stream(path) as out:
            out.write(data)

    def read_bytes(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            with _remote_errors(path), self.fs.open_input_stream(path) as fh:
                return bytes(fh.read())
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        path = self.path(key)
        with _remote_errors(path):
            return bool(self.fs.get_file_info(path).type != pafs.FileType.NotFound)

    def delete(self, key: str) -> None:
        """Remove one file; one that is not there is not an error."""
        path = self.path(key)
        try:
            with _remote_errors(path):
                self.fs.delete_file(path)
        except FileNotFoundError:
            return

    def names(self, key: str) -> list[str]:
        path = self.path(key)
        with _remote_errors(path):
            infos = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return _visible([info.base_name for info in infos])

    def put_dir(self, src: Path, key: str, token: bytes) -> None:
        dest = self.path(key)
        with _remote_errors(dest):
            try:
                self.fs.delete_file(f"{dest}/{MARKER}")  # uncommit first
            except FileNotFoundError:
                pass
            self.fs.delete_dir_contents(dest, missing_dir_ok=True)
            for file in sorted(p for p in src.rglob("*") if p.is_file()):
                rel = file.relative_to(src).as_posix()
                if rel != MARKER:
                    self._upload(file, f"{dest}/{rel}")
        self.write_bytes(f"{key}/{MARKER}", token)

    def _upload(self, file: Path, path: str) -> None:
        with open(file, "rb") as fh, self.fs.open_output_stream(path) as out:
            shutil.copyfileobj(fh, out, _CHUNK)

    def copy_dir_out(self, key: str, dest: Path) -> None:
        src = self.path(key)
        try:
            with _remote_errors(src):
                infos = self.fs.get_file_info(pafs.FileSelector(src, recursive=True))
        except FileNotFoundError:
            raise FolderChanged(f"{src} vanished before it was copied") from None
        with _remote_errors(src):
            files = [i.path for i in infos if i.type == pafs.FileType.File]
            for path in files:
                rel = path[len(src) + 1:]
                if rel != MARKER:
                    self._download(path, dest / rel)

    def _download(self, path: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.fs.open_input_stream(path) as fh, open(target, "wb") as out:
                shutil.copyfileobj(fh, out, _CHUNK)
        except FileNotFoundError:
            raise FolderChanged(f"{path} vanished while its folder was copied") from None
