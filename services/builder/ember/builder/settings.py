"""Builder settings: the shared `EMBER_*` variables plus `EMBER_BUILDER_*`."""

from __future__ import annotations

import shlex
from pathlib import Path

from pydantic import Field

from ember.settings import Settings


class BuilderSettings(Settings):
    """What `python -m ember.builder` reads from the environment (and its flags)."""

    builder_client_id: str = "ember-builder"
    """MQTT client id (persistent session)."""
    builder_artifacts_dir: Path | None = None
    """Default: `<EMBER_HOME>/artifacts`."""
    builder_pip_args: str = ""
    """Extra `pip install` arguments, e.g. `--no-index --find-links /srv/wheels` for offline sites."""
    builder_timeout: float = Field(default=900.0, gt=0)
    """Seconds one `pip install` may take before the build fails."""
    builder_grace: float = Field(default=10.0, ge=0)
    """Seconds a running build gets to finish on SIGTERM before it is killed (and redone on restart)."""
    builder_resync: float = Field(default=2.0, gt=0)
    builder_bundle_keep: float = Field(default=60.0, ge=0)
    """Seconds a code bundle stays retained on the broker after the last job using it ended (a
    client that just published it for a new job has this long to submit that job)."""
    base_image: str = ""
    """`EMBER_BASE_IMAGE`: the base of every docker-runtime image. Empty: Ember's own, built here
    from `builder_base_recipe` (once per machine, cached by the recipe's content hash)."""
    builder_base_recipe: Path | None = None
    """Default: deploy/images/base of the ember-common source tree."""
    builder_wheelhouse_dir: Path | None = None
    """Default: `<EMBER_HOME>/wheelhouse` (content-addressed wheel folders for image builds)."""

    def artifacts_dir(self) -> Path:
        return (self.builder_artifacts_dir or self.home / "artifacts").expanduser()

    def wheelhouse_dir(self) -> Path:
        return (self.builder_wheelhouse_dir or self.home / "wheelhouse").expanduser()

    def pip_args(self) -> list[str]:
        return shlex.split(self.builder_pip_args)
