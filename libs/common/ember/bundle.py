"""Content-addressed code bundles: a job's code folder as one deterministic archive.

A bundle is a gzip-compressed tar of the folder's files, in sorted order, with every mtime,
owner and group fixed and modes reduced to 0644/0755, and a gzip header without a name or
time: the same code always gives the same bytes, so `sha256:<hex of those bytes>` names it.

`pack` honours `.gitignore` files (in the folder and below, git's rules through `pathspec`) and
an `.emberignore` at the top (same syntax), and always skips `.git/`, `__pycache__/`, `.venv/`
and the tool caches. A bundle bigger than the limit is refused with the biggest files named.
`unpack` refuses what could write outside its folder: absolute paths, `..`, links that escape,
hard links, devices and other special files, and archives that expand past a bound.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ember.errors import InvalidRequest

DEFAULT_LIMIT = 32 * 1024 * 1024
"""Largest packed bundle, in bytes (`EMBER_BUNDLE_MAX_BYTES`)."""
MAX_UNPACKED_RATIO = 16
"""`unpack` refuses an archive that expands to more than this many times its limit."""
ALWAYS_SKIPPED = (".git", "__pycache__", ".venv", ".pytest_cache", ".mypy_cache", ".ruff_cache")
IGNORE_FILES = (".gitignore",)
TOP_IGNORE_FILE = ".emberignore"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
STAGING_PREFIX = ".tmp-"


class BundleError(InvalidRequest):
    """A code folder that cannot be packed, or bytes that are not a safe bundle."""

    code = "invalid_bundle"


class BundleTooLarge(BundleError):
    code = "bundle_too_large"


@dataclass(frozen=True)
class Bundle:
    digest: str
    """`sha256:<64 hex>` of `data`."""
    data: bytes
    files: int
    """Regular files and links packed."""

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def check_digest(digest: str) -> str:
    """`digest` if it is `sha256:<64 lowercase hex>`, else BundleError."""
    if not DIGEST_RE.match(digest):
        raise BundleError(f"not a bundle digest: {digest[:80]!r} (want 'sha256:' and 64 lowercase hex digits)")
    return digest


def verify(data: bytes, digest: str) -> None:
    got = digest_of(data)
    if got != digest:
        raise BundleError(f"bundle content does not match its digest: want {digest}, got {got}")


# --- ignore rules ---------------------------------------------------------------------------
class _Ignores:
    """The ignore files that apply under one folder, deepest last (a later match wins)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rules: list[tuple[str, Any]] = []  # (folder relative to the top, "" at the top; spec)

    def add(self, rel_dir: str, lines: list[str]) -> None:
        import pathspec  # the CLI's and the builder's dependency; unpacking does not need it

        if any(line.strip() and not line.lstrip().startswith("#") for line in lines):
            self.rules.append((rel_dir, pathspec.GitIgnoreSpec.from_lines(lines)))

    def ignored(self, rel: str, *, is_dir: bool) -> bool:
        verdict = False
        for base, spec in self.rules:
            if base and not rel.startswith(base + "/"):
                continue
            sub = rel[len(base) + 1 :] if base else rel
            result = spec.check_file(sub + "/" if is_dir else sub)
            if result.include is not None:
                verdict = bool(result.include)
        return verdict


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def code_files(folder: Path) -> list[tuple[str, Path]]:
    """(archive name, path) of every file and link `pack` takes from `folder`, sorted by name."""
    folder = folder.resolve()
    if not folder.is_dir():
        raise BundleError(f"code folder {folder} does not exist or is not a folder")
    ignores = _Ignores(folder)
    ignores.add("", _read_lines(folder / TOP_IGNORE_FILE))
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        rel_dir = here.relative_to(folder).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in IGNORE_FILES:
            if (here / name).is_file():
                ignores.add(rel_dir, _read_lines(here / name))
        keep = []
        for name in sorted(dirnames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = here / name
            if name in ALWAYS_SKIPPED or ignores.ignored(rel, is_dir=True):
                continue
            if path.is_symlink():  # a link to a folder is packed as a link, not followed
                found.append((rel, path))
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = here / name
            if name.endswith(".pyc") or ignores.ignored(rel, is_dir=False):
                continue
            if path.is_symlink() or path.is_file():
                found.append((rel, path))
    return sorted(found)


# --- pack -----------------------------------------------------------------------------------
class _Capped(io.BytesIO):
    """A BytesIO that raises once more than `limit` bytes are written to it."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self.limit:
            raise OverflowError
        return super().write(data)


def _link_inside(rel: str, target: str) -> bool:
    if not target or os.path.isabs(target):
        return False
    joined = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    return joined != ".." and not joined.startswith("../")


def _too_large(folder: Path, files: list[tuple[str, Path]], limit: int) -> BundleTooLarge:
    sizes = sorted(((path.lstat().st_size, rel) for rel, path in files), reverse=True)[:5]
    biggest = ", ".join(f"{rel} ({size / 1048576:.1f} MiB)" for size, rel in sizes)
    return BundleTooLarge(
        f"the code folder {folder} packs to more than {limit / 1048576:g} MiB; biggest files: {biggest}. "
        f"Leave data and build output out with {TOP_IGNORE_FILE} or .gitignore (or raise EMBER_BUNDLE_MAX_BYTES)",
        details=[{"field": "code.path", "reason": f"bundle larger than {limit} bytes"}],
    )


def pack(folder: Path, *, limit: int = DEFAULT_LIMIT) -> Bundle:
    """The bundle of `folder` (see the module docstring); BundleError / BundleTooLarge."""
    folder = Path(folder).resolve()
    files = code_files(folder)
    out = _Capped(limit)
    try:
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel, path in files:
                    info = _entry(folder, rel, path)
                    if info.isreg():
                        with path.open("rb") as content:
                            tar.addfile(info, content)
                    else:
                        tar.addfile(info)
    except OverflowError:
        raise _too_large(folder, files, limit) from None
    data = out.getvalue()
    return Bundle(digest_of(data), data, len(files))


def _entry(folder: Path, rel: str, path: Path) -> tarfile.TarInfo:
    """The tar header of one file or link, with nothing in it that varies between machines."""
    info = tarfile.TarInfo(rel)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if path.is_symlink():
        target = os.readlink(path)
        if not _link_inside(rel, target):
            raise BundleError(f"{rel} is a link to {target}, outside the code folder {folder}: copy the file in or ignore the link")
        info.type = tarfile.SYMTYPE
        info.linkname = target
        info.mode = 0o777
        return info
    stat = path.stat()
    info.size = stat.st_size
    info.mode = 0o755 if stat.st_mode & 0o111 else 0o644
    return info


# --- unpack ---------------------------------------------------------------------------------
def _safe_name(name: str) -> str:
    if not name or "\x00" in name or name.startswith("/") or os.path.isabs(name):
        raise BundleError(f"unsafe bundle entry {name[:200]!r}: absolute path")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise BundleError(f"unsafe bundle entry {name[:200]!r}: '..' in its path")
    clean = "/".join(p for p in parts if p not in ("", "."))
    if not clean:
        raise BundleError(f"unsafe bundle entry {name[:200]!r}: empty path")
    return clean


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def unpack(data: bytes, dest: Path, *, max_bytes: int = DEFAULT_LIMIT * MAX_UNPACKED_RATIO) -> int:
    """Extract bundle bytes into the new folder `dest`; number of entries. On any unsafe entry
    raise BundleError and leave no `dest` behind."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    try:
        return _extract(data, dest, max_bytes)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _extract(data: bytes, dest: Path, max_bytes: int) -> int:
    root = os.path.realpath(dest)
    total = entries = 0
    links: list[str] = []
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"not a bundle (gzip tar): {exc}") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"corrupt bundle: {exc}") from None
        for member in members:
            name = _safe_name(member.name)
            target = os.path.join(root, name)
            parent = os.path.dirname(target)
            if not _inside(os.path.realpath(parent), root):  # before creating anything along it
                raise BundleError(f"unsafe bundle entry {name!r}: written through a link out of the folder")
            os.makedirs(parent, exist_ok=True)
            if member.isdir():
                os.makedirs(target, exist_ok=True)
            elif member.issym():
                if not _link_inside(name, member.linkname):
                    raise BundleError(f"unsafe bundle entry {name!r}: a link to {member.linkname!r}, outside the bundle")
                os.symlink(member.linkname, target)
                links.append(target)
            elif member.isreg():
                total += member.size
                if total > max_bytes:
                    raise BundleError(f"bundle expands to more than {max_bytes} bytes")
                source = tar.extractfile(member)
                assert source is not None
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if member.mode & 0o111 else 0o644)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out)
            else:
                kind = "a hard link" if member.islnk() else "a device or special file"
                raise BundleError(f"unsafe bundle entry {name!r}: {kind}")
            entries += 1
    for link in links:  # chains of links that each stay inside can still end outside
        if not _inside(os.path.realpath(link), root):
            raise BundleError(f"unsafe bundle entry {os.path.relpath(link, root)!r}: its links lead outside the bundle")
    return entries


def unpack_cached(data: bytes, digest: str, cache: Path) -> Path:
    """`cache/<hex>`, the bundle unpacked there once (verified, staged, renamed into place)."""
    check_digest(digest)
    final = cache / digest.removeprefix("sha256:")
    if final.is_dir():
        return final
    verify(data, digest)
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    unpack(data, staging)
    try:
        staging.rename(final)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not final.is_dir():
            raise
    return final


def cached(digest: str, cache: Path) -> Path | None:
    """The unpacked folder of `digest` in `cache`, if it is there."""
    folder = cache / check_digest(digest).removeprefix("sha256:")
    return folder if folder.is_dir() else None
