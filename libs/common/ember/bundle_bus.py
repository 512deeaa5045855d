"""Code bundles over MQTT: published retained on `bundles/{digest}` (QoS 1), fetched by digest.

The submitting client publishes the bundle before its `jobs.submit` request and names it in
`code.bundle`; the builder and process-runtime flamelets fetch it by digest (each verifies
it and caches it by that digest); the builder clears the retained message once no live job
uses the digest. See docs/control-plane.md, "Code bundles".
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

from ember import topics
from ember.bundle import DEFAULT_LIMIT, Bundle, BundleError, check_digest, pack, verify
from ember.bus import Bus, Message
from ember.errors import NotFound
from ember.security.mqtt import MqttSecurity

PUBLISH_TIMEOUT = 120.0
"""Seconds a bundle publish may take (up to the size limit over a slow link)."""


def topic(root: str, digest: str) -> str:
    return topics.BUNDLE.format(root, digest=check_digest(digest))


async def publish_bundle(bus: Bus, bundle: Bundle) -> None:
    """Publish `bundle` retained (QoS 1: returns once the broker has it)."""
    await bus.publish(topic(bus.root, bundle.digest), bundle.data, retain=True, timeout=PUBLISH_TIMEOUT)


async def clear_bundle(bus: Bus, digest: str) -> None:
    """Remove the retained bundle `digest` from the broker."""
    await bus.publish(topic(bus.root, digest), b"", retain=True)


async def fetch_bundle(url: str, root: str, digest: str, *, wait: float = 30.0, client_id: str | None = None,
                       security: MqttSecurity | None = None) -> bytes:
    """The bytes of bundle `digest` from its retained message, verified. One short-lived
    connection (credentials: `security`, default this process's identity, as for any Bus);
    NotFound when nothing is retained there within `wait` seconds."""
    check_digest(digest)
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    async def on_bundle(message: Message) -> None:
        if not message.payload or got.done():
            return
        try:
            verify(message.payload, digest)
        except BundleError as exc:
            got.set_exception(exc)
        else:
            got.set_result(message.payload)

    bus = Bus(url, root=root, client_id=client_id, source="bundle-fetch", security=security)
    bus.subscribe(topics.BUNDLE, on_bundle, raw=True, digest=digest)
    async with bus:
        try:
            return await asyncio.wait_for(got, wait)
        except TimeoutError:
            raise NotFound(
                f"no code bundle {digest} on the broker ({topic(root, digest)}) after {wait:g}s: "
                "it was never published, or every job using it has ended; submit the job again"
            ) from None


def bundle_spec(spec: dict[str, Any], spec_dir: Path, *, limit: int = DEFAULT_LIMIT) -> tuple[dict[str, Any], Bundle | None]:
    """The spec to send and the bundle to publish first: `code.path` (relative to `spec_dir`)
    packed and replaced by `code.bundle`. A git source, a spec that already names a bundle,
    and a probe job without code are sent as they are (no bundle)."""
    spec = copy.deepcopy(spec)
    code = spec.get("code")
    if code is None:
        code = {}
    if not isinstance(code, dict) or code.get("git") or code.get("bundle"):
        return spec, None
    needs_code = bool(code.get("path") or code.get("entrypoint") or code.get("serverapp") or "probe" not in spec)
    if not needs_code:
        return spec, None
    folder = Path(str(code.pop("path", None) or "."))
    folder = folder if folder.is_absolute() else spec_dir / folder
    bundle = pack(folder, limit=limit)
    spec["code"] = {**code, "bundle": bundle.digest}
    return spec, bundle


async def submit_job(bus: Bus, spec: dict[str, Any], spec_dir: Path, *, limit: int = DEFAULT_LIMIT, request_timeout: float = 30.0,
                     id: str | None = None) -> Any:
    """Pack and publish the job's code, then send `jobs.submit`; the manager's reply."""
    spec, bundle = bundle_spec(spec, spec_dir, limit=limit)
    if bundle is not None:
        await publish_bundle(bus, bundle)
    return await bus.request("jobs.submit", {"spec": spec}, timeout=request_timeout, id=id)
