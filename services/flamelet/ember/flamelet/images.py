"""Images on a node: progress of a pull, and which images this node used last (for collection).

`PullTracker` folds the engine's pull stream (one status per layer) into bytes done / total.
`ImageUse` records when each image was last started here (`images.json` in the node folder);
`collect` removes the images beyond the `keep` most recently used. The engine refuses to
remove an image a container still uses (of this node or any other on the same engine): such
an image is skipped and tried again next time.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors

from ember.log import get_logger

log = get_logger("ember.flamelet.images")


class PullTracker:
    """Bytes done and total over the layers of one pull (fed from the pull thread)."""

    def __init__(self) -> None:
        self._layers: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def update(self, event: dict[str, Any]) -> None:
        layer = event.get("id")
        status = str(event.get("status", ""))
        if not layer or ":" in layer:  # "sha256:…"/tag lines describe the image, not a layer
            return
        with self._lock:
            done, total = self._layers.get(layer, (0, 0))
            detail = event.get("progressDetail") or {}
            if status == "Downloading" and detail.get("total"):
                done, total = int(detail.get("current", 0)), int(detail["total"])
            elif status in ("Download complete", "Pull complete", "Already exists"):
                done = total
            self._layers[layer] = (done, total)

    @property
    def bytes(self) -> tuple[int, int]:
        with self._lock:
            return sum(d for d, _ in self._layers.values()), sum(t for _, t in self._layers.values())


class ImageUse:
    """When each image was last started on this node; keeps the `keep` most recent ones."""

    def __init__(self, path: Path, *, keep: int) -> None:
        self.path = path
        self.keep = keep
        self._lock = threading.Lock()

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
            return {str(k): float(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _write(self, data: dict[str, float]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, self.path)

    def used(self, image: str) -> None:
        with self._lock:
            data = self._read()
            data[image] = time.time()
            self._write(data)

    def collect(self, client: docker.DockerClient) -> list[str]:
        """Remove the images beyond the `keep` most recently used; the ones removed."""
        with self._lock:
            data = self._read()
            old = sorted(data, key=data.__getitem__, reverse=True)[self.keep :]
            removed = []
            for image in old:
                try:
                    client.images.remove(image)
                except docker.errors.ImageNotFound:
                    pass
                except docker.errors.APIError as exc:  # still used by a container: next time
                    log.info("flamelet.image_kept", image=image, reason=str(exc.explanation or exc)[:200])
                    continue
                del data[image]
                removed.append(image)
            if removed:
                self._write(data)
                log.info("flamelet.images_removed", images=removed)
            return removed
