"""Image builds for the docker runtime: base image, digits job image cold, code-only rebuild, cache hit.

    python -m bench.bench_images [--cold-base] [--wheelhouse DIR]

Against the real engine and a private `docker-registry`. `--cold-base` first removes Ember's rootfs
and base images (and their wheelhouses), so the base is built from the recipe (debootstrap included);
without it the base is whatever this machine has cached. The job image's cold build removes the
requirements layer and the job's wheelhouse first (pip's own HTTP cache on the host stays warm), and
runs against a registry that already holds the base's layers, as it does after the first job.
Only `--cold-base` removes shared images (every ember/actor, deps, base and rootfs image on the
engine): do not use it while anything else on the machine uses them.
Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from ember.builder.artifacts import BuildRun
from ember.builder.base_image import build_base, default_recipe
from ember.builder.containers import docker_client, push
from ember.builder.images import REPOSITORY, ImageSettings, build_image
from ember.jobspec import JobSpec
from ember.registry import private_registry

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6


def compressed_size(registry: str, repository: str, reference: str) -> int:
    """Bytes a node pulls: the manifest's config and layer sizes (gzip)."""
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{reference}", headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        manifest = json.load(reply)
    return manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold-base", action="store_true", help="remove Ember's base images first and build them from the recipe")
    parser.add_argument("--wheelhouse", type=Path, default=Path(tempfile.gettempdir()) / "ember-bench-wheelhouse")
    args = parser.parse_args()
    client = docker_client()
    if args.cold_base:
        for kind in ("ember/actor", "ember/deps", "ember/base", "ember/rootfs"):  # children before parents
            for image in client.images.list():
                if any(tag.rsplit(":", 1)[0].endswith(kind) for tag in image.tags):
                    client.images.remove(image.id, force=True)
        shutil.rmtree(args.wheelhouse, ignore_errors=True)
    results: dict[str, object] = {}
    log: list[str] = []
    started = time.monotonic()
    base = build_base(client, default_recipe(), args.wheelhouse, BuildRun(), log, pip_args=[], timeout=1800)
    results["base_build_s" if args.cold_base else "base_lookup_s"] = round(time.monotonic() - started, 2)
    results["base_size_mb"] = round(client.images.get(base.id).attrs["Size"] / MB)
    rootfs = client.images.get(f"ember/rootfs:{hashlib.sha256((default_recipe() / 'rootfs.sh').read_bytes()).hexdigest()[:20]}")
    results["rootfs_size_mb"] = round(rootfs.attrs["Size"] / MB)

    with private_registry() as registry, tempfile.TemporaryDirectory(prefix="ember-bench-") as tmp:
        base_repo = f"{registry.address}/ember/base"
        tag = base.ref.split(":")[1]
        client.images.get(base.id).tag(base_repo, tag)
        started = time.monotonic()
        push(client, base_repo, tag, [])
        results["base_first_push_s"] = round(time.monotonic() - started, 2)
        results["base_compressed_mb"] = round(compressed_size(registry.address, "ember/base", tag) / MB)

        code = Path(tmp) / "digits"
        shutil.copytree(ROOT / "examples" / "digits", code)
        raw = yaml.safe_load((code / "job.yaml").read_text())
        spec = JobSpec.model_validate({**raw, "runtime": "docker"})
        settings = ImageSettings(registry=registry.address, wheelhouse=args.wheelhouse, timeout=1800)
        with private_registry() as scratch:  # a first build, to know (and then drop) digits' requirements layer
            warm = build_image(spec, str(code), ImageSettings(registry=scratch.address, wheelhouse=args.wheelhouse), BuildRun())
        job = client.images.get(f"{scratch.address}/{REPOSITORY}:{warm.key}")
        deps = client.images.get(job.attrs["Parent"])
        client.images.remove(job.id, force=True)
        for tag in deps.tags:
            client.images.remove(tag)
        for folder in args.wheelhouse.iterdir():  # the job's wheelhouse (the base's has no scikit-learn)
            if (folder / "wheels.json").is_file() and "scikit" in (folder / "wheels.json").read_text():
                shutil.rmtree(folder)

        def timed(name: str) -> object:
            started = time.monotonic()
            artifact = build_image(spec, str(code), settings, BuildRun())
            results[name] = round(time.monotonic() - started, 2)
            return artifact

        cold = timed("job_cold_build_s")
        image = client.images.get(f"{registry.address}/{REPOSITORY}:{cold.key}")
        results["job_size_mb"] = round(image.attrs["Size"] / MB)
        results["job_compressed_mb"] = round(compressed_size(registry.address, REPOSITORY, cold.key) / MB)
        results["job_layers"] = len(image.attrs["RootFS"]["Layers"])
        hit = timed("cache_hit_s")
        assert hit.cached and hit.image == cold.image
        model = code / "model.py"
        model.write_text(model.read_text() + "\n# a one-line change\n")
        changed = timed("code_only_rebuild_s")
        assert not changed.cached and changed.image != cold.image
        for image in client.images.list():  # tags naming the benchmark's registries die with them
            for name in image.tags:
                if name.startswith((f"{registry.address}/", f"{scratch.address}/")):
                    client.images.remove(name)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
