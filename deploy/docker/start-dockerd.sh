#!/usr/bin/env bash
# Start the Docker engine in the background when none answers, then wait until `docker info` does.
# For machines without an init system that starts it (CI containers, these build hosts); where
# systemd runs dockerd this finds it answering and does nothing. Log: $EMBER_DOCKERD_LOG.
set -euo pipefail
log=${EMBER_DOCKERD_LOG:-/var/log/ember-dockerd.log}
if docker info >/dev/null 2>&1; then exit 0; fi
command -v dockerd >/dev/null || { echo "dockerd is not installed (apt-get install docker.io)" >&2; exit 1; }
echo "starting dockerd (log: $log)"
# setsid: its own session, so it outlives the make that started it and no terminal signal reaches it.
setsid dockerd >>"$log" 2>&1 </dev/null &
for _ in $(seq 1 600); do
  docker info >/dev/null 2>&1 && exit 0
  kill -0 $! 2>/dev/null || { echo "dockerd exited; last lines of $log:" >&2; tail -n 20 "$log" >&2; exit 1; }
  sleep 0.1
done
echo "dockerd did not answer within 60 s; see $log" >&2
exit 1
