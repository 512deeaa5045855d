#!/usr/bin/env bash
# Build Ember's service image offline, the way the actor base image is built (deploy/images/base):
#   deploy/images/ember-service/build.sh [TAG]          (default TAG: ember/service:latest)
# needs root (debootstrap), a Docker engine, and the host's Python of the image's version (3.11,
# Debian bookworm's). Steps:
#   1. rootfs: deploy/images/base/rootfs.sh (Debian minbase + python3) imported as ember/rootfs:service-<hash>
#      (skipped when that image exists; ROOTFS=image uses another root file system with python3);
#   2. wheelhouse: the Ember wheels built from this source tree, and every dependency (full MLflow for
#      the tracking server included) resolved on the host with pip, which can reach the package index;
#   3. docker build with no network: pip installs from the wheelhouse only (Dockerfile beside this file).
# PIP_ARGS adds pip options for step 2 (an index mirror, say).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
tag=${1:-ember/service:latest}
python=${PYTHON:-python3}
want=3.11
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have" = "$want" ] || { echo "the wheelhouse must be built with Python $want (the image's); $python is $have: set PYTHON" >&2; exit 1; }

rootfs=${ROOTFS:-}
if [ -z "$rootfs" ]; then
  recipe="$repo/deploy/images/base/rootfs.sh"
  [ -f "$recipe" ] || { echo "$recipe is missing: set ROOTFS to an image with python3 $want" >&2; exit 1; }
  rootfs="ember/rootfs:service-$(sha256sum "$recipe" | cut -c1-20)"
  if ! docker image inspect "$rootfs" >/dev/null 2>&1; then
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    bash "$recipe" "$tmp/rootfs"
    tar --numeric-owner -C "$tmp/rootfs" -c . | docker import - "$rootfs"
    rm -rf "$tmp/rootfs"
  fi
fi

context=$(mktemp -d); trap 'rm -rf "$context" ${tmp:+"$tmp"}' EXIT
mkdir "$context/wheelhouse"
members=(libs/common services/manager services/builder services/notifier services/flamelet services/mldata)
for member in "${members[@]}"; do
  "$python" -m pip wheel --quiet --no-deps --wheel-dir "$context/wheelhouse" "$repo/$member" ${PIP_ARGS:-}
done
# What the image installs: every Ember member by its wheel file (never a same-named package from an
# index), with the CLI's and MongoDB's extras and the actor runtime, and MLflow with its server. The
# wheelhouse gets all of it and its dependencies, plus pip to install them.
cd "$context/wheelhouse"
requirements=()
for wheel in ember_*.whl; do
  case $wheel in ember_common-*) requirements+=("$wheel[actor,cli,mongo]") ;; *) requirements+=("$wheel") ;; esac
done
requirements+=("mlflow>=3.1,<4")
cd - >/dev/null
printf '/wheels/%s\n' "${requirements[@]:0:${#members[@]}}" > "$context/wheelhouse/requirements.txt"
printf '%s\n' "${requirements[@]:${#members[@]}}" >> "$context/wheelhouse/requirements.txt"
(cd "$context/wheelhouse" && "$python" -m pip wheel --quiet --wheel-dir . --find-links . \
  "${requirements[@]/#ember_/./ember_}" pip ${PIP_ARGS:-})
cp "$here/Dockerfile" "$context/Dockerfile"
docker build --network none --build-arg ROOTFS="$rootfs" -t "$tag" "$context"
echo "built $tag"
