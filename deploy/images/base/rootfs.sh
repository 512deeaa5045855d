#!/usr/bin/env bash
# Ember's base image, first layer: a minimal Debian root file system with Python, written to DIR.
#   rootfs.sh DIR [MIRROR]        (root: debootstrap needs it)
# The builder imports DIR as an image (`docker import`), then adds Ember's actor runtime from a
# wheelhouse (requirements.txt beside this file) with no network inside the image. This file is part
# of the base image's cache key: any edit here makes a new base image.
set -euo pipefail
dir=$1
mirror=${2:-http://deb.debian.org/debian}
debootstrap --variant=minbase --include=python3 bookworm "$dir" "$mirror"
# Nothing in an actor uses apt's caches, documentation or translations: drop them from the layer.
rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin "$dir"/var/lib/apt/lists/* \
  "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/usr/share/locale/* \
  "$dir"/var/log/* "$dir"/tmp/* "$dir"/root/.cache
