"""Code bundles: deterministic packing, ignore files, the size limit, safe unpacking, transport
over a real Mosquitto, and the manager's rule that a spec names a bundle or a git source."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from ember.bundle import Bundle, BundleError, BundleTooLarge, code_files, digest_of, pack, unpack, unpack_cached
from ember.bundle_bus import bundle_spec, clear_bundle, fetch_bundle, publish_bundle
from ember.bus import Bus
from ember.errors import InvalidJobSpec, NotFound
from ember.jobspec import submittable_spec

pytestmark = pytest.mark.timeout(60)


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


@pytest.fixture
def code(tmp_path: Path) -> Path:
    return write(tmp_path / "code", {
        "model.py": "class M: ...\n",
        "pkg/__init__.py": "",
        "pkg/util.py": "X = 1\n",
        "run.sh": "#!/bin/sh\n",
        "requirements.txt": "numpy\n",
    })


def names(bundle: Bundle) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(bundle.data)) as tar:
        return tar.getnames()


def test_same_code_gives_the_same_digest_whatever_the_times_owners_and_order(code: Path, tmp_path: Path) -> None:
    (code / "run.sh").chmod(0o755)
    first = pack(code)
    assert first.digest == digest_of(first.data) and first.digest.startswith("sha256:") and len(first.hex) == 64
    os.utime(code / "model.py", (1, 1))  # another mtime
    (code / "pkg" / "util.py").chmod(0o600)  # another non-executable mode
    copy = write(tmp_path / "elsewhere" / "copy", {p.relative_to(code).as_posix(): p.read_bytes() for p in code.rglob("*") if p.is_file()})
    (copy / "run.sh").chmod(0o755)
    assert pack(code).digest == first.digest == pack(copy).digest
    (code / "model.py").write_text("class M: changed = 1\n")
    assert pack(code).digest != first.digest
    assert names(first) == sorted(names(first))
    with tarfile.open(fileobj=io.BytesIO(first.data)) as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert {m.name: m.mode for m in members}["run.sh"] == 0o755


def test_gitignore_emberignore_and_the_always_skipped_folders(code: Path) -> None:
    write(code, {
        ".gitignore": "*.log\n/data/\n!keep.log\n",
        ".emberignore": "notebooks/\nbig.bin\n",
        "train.log": "x", "keep.log": "kept", "data/a.csv": "1", "sub/data/b.csv": "2",
        "notebooks/n.ipynb": "{}", "big.bin": b"\0" * 10, "sub/.gitignore": "local.txt\n", "sub/local.txt": "x", "sub/other.txt": "y",
        ".git/HEAD": "ref", "__pycache__/m.pyc": b"x", "pkg/__pycache__/u.pyc": b"x", ".venv/bin/python": "x", "stray.pyc": b"x",
    })
    packed = {name for name, _ in code_files(code)}
    assert packed == {
        ".emberignore", ".gitignore", "keep.log", "model.py", "pkg/__init__.py", "pkg/util.py", "requirements.txt", "run.sh",
        "sub/.gitignore", "sub/data/b.csv", "sub/other.txt",
    }
    assert sorted(names(pack(code))) == sorted(packed)


def test_a_bundle_past_the_limit_names_the_biggest_files(code: Path) -> None:
    write(code, {"weights.bin": os.urandom(300_000), "cache.bin": os.urandom(200_000)})
    with pytest.raises(BundleTooLarge) as err:
        pack(code, limit=100_000)
    message = err.value.message
    assert "weights.bin" in message and "cache.bin" in message and message.index("weights.bin") < message.index("cache.bin")
    assert ".emberignore" in message and err.value.details[0]["field"] == "code.path"
    (code / ".emberignore").write_text("*.bin\n")
    assert pack(code, limit=100_000).files == 6


def test_links_inside_are_kept_and_links_out_are_refused(code: Path, tmp_path: Path) -> None:
    (code / "alias.py").symlink_to("model.py")
    out = tmp_path / "unpacked"
    unpack(pack(code).data, out)
    assert (out / "alias.py").is_symlink() and (out / "alias.py").read_text() == "class M: ...\n"
    (code / "secret").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="outside the code folder"):
        pack(code)


def evil(*entries: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


# each link stays inside on its own (checked by name), but `esc` resolves to the folder above
CHAIN = [entry("a/b/c", tarfile.DIRTYPE), entry("a/b/c/l", tarfile.SYMTYPE, "../.."), entry("esc", tarfile.SYMTYPE, "a/b/c/l/../..")]


@pytest.mark.parametrize(("entries", "reason"), [
    ([entry("/etc/evil")], "absolute path"),
    ([entry("../evil")], "'..'"),
    ([entry("a/../../evil")], "'..'"),
    ([entry("out", tarfile.SYMTYPE, "/etc")], "outside the bundle"),
    ([entry("out", tarfile.SYMTYPE, "../..")], "outside the bundle"),
    ([*CHAIN, entry("esc/new/x")], "through a link"),
    (CHAIN, "lead outside"),
    ([entry("dev", tarfile.CHRTYPE)], "device"),
    ([entry("fifo", tarfile.FIFOTYPE)], "device"),
    ([entry("hard", tarfile.LNKTYPE, "model.py")], "hard link"),
])
def test_unsafe_archives_are_refused_and_leave_nothing(tmp_path: Path, entries: list[tarfile.TarInfo], reason: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match=reason):
        unpack(evil(*entries), dest)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor anything beside it


def test_unpack_cached_verifies_the_digest_and_unpacks_once(code: Path, tmp_path: Path) -> None:
    bundle = pack(code)
    cache = tmp_path / "cache"
    with pytest.raises(BundleError, match="does not match"):
        unpack_cached(bundle.data + b"x", bundle.digest, cache)
    folder = unpack_cached(bundle.data, bundle.digest, cache)
    assert folder == cache / bundle.hex and (folder / "pkg" / "util.py").read_text() == "X = 1\n"
    assert os.access(folder / "run.sh", os.X_OK) or not os.access(code / "run.sh", os.X_OK)
    assert unpack_cached(b"", bundle.digest, cache) == folder  # cached: the bytes are not needed again
    assert [p.name for p in cache.iterdir()] == [bundle.hex]
    with pytest.raises(BundleError, match="not a bundle digest"):
        unpack_cached(bundle.data, "sha256:XYZ", cache)


def test_bundle_spec_replaces_the_path_and_leaves_git_and_probe_alone(code: Path) -> None:
    spec = {"name": "m", "code": {"path": "code", "entrypoint": "model:M"}}
    sent, bundle = bundle_spec(spec, code.parent)
    assert bundle is not None and sent["code"] == {"entrypoint": "model:M", "bundle": bundle.digest}
    assert spec["code"]["path"] == "code"  # the caller's dict is untouched
    assert submittable_spec(sent).code.bundle == bundle.digest
    for untouched in ({"name": "g", "code": {"git": "https://example.invalid/r.git", "entrypoint": "m:M"}}, {"name": "p", "probe": {}}):
        assert bundle_spec(untouched, code.parent) == (untouched, None)


@pytest.mark.parametrize(("code", "field"), [
    ({"path": "/home/me/project", "entrypoint": "model:M"}, "code.path"),
    ({"entrypoint": "model:M"}, "code.bundle"),
])
def test_a_spec_without_bundle_or_git_is_refused_naming_the_field(code: dict, field: str) -> None:
    with pytest.raises(InvalidJobSpec) as err:
        submittable_spec({"name": "m", "code": code})
    assert [d["field"] for d in err.value.details] == [field]
    assert submittable_spec({"name": "m", "code": {"git": "https://example.invalid/r.git", "entrypoint": "model:M"}}).code.git
    assert submittable_spec({"name": "p", "probe": {"seconds": 0}}).probe is not None


async def test_published_retained_fetched_by_digest_and_cleared(mqtt_broker, code: Path) -> None:
    bundle = pack(code)
    async with Bus(mqtt_broker.url) as bus:
        await publish_bundle(bus, bundle)
        assert await fetch_bundle(mqtt_broker.url, bus.root, bundle.digest) == bundle.data
        await clear_bundle(bus, bundle.digest)
    with pytest.raises(NotFound, match="submit the job again"):
        await fetch_bundle(mqtt_broker.url, "ember/v1", bundle.digest, wait=0.5)
