#!/usr/bin/env bash
# A Docker daemon for the image tests: uses the running one, else starts
# `dockerd --bridge=none --iptables=false --ip-masq=false` (containers use the host's network;
# no bridge, no firewall rules) in the background, logging to $DOCKERD_LOG.
# Exits 0 when `docker info` answers; else 1, saying why on stderr.
set -uo pipefail
LOG=${DOCKERD_LOG:-/tmp/easel-dockerd.log}
WAIT=${DOCKERD_WAIT:-60}   # seconds for a started daemon to answer
why() { echo "dockerd: cannot run the image tests: $*" >&2; exit 1; }
command -v docker >/dev/null || why "no docker client on PATH (apt-get install docker.io)"
docker info >/dev/null 2>&1 && exit 0
command -v dockerd >/dev/null || why "no dockerd on PATH (apt-get install docker.io)"
[ "$(id -u)" = 0 ] || why "no daemon answers and starting one needs root (uid $(id -u))"
nohup dockerd --bridge=none --iptables=false --ip-masq=false >>"$LOG" 2>&1 &
for _ in $(seq "$WAIT"); do
    docker info >/dev/null 2>&1 && { echo "dockerd: started (pid $!, log $LOG)"; exit 0; }
    kill -0 $! 2>/dev/null || why "dockerd exited; the end of $LOG:
$(tail -5 "$LOG")"
    sleep 1
done
why "dockerd did not answer in ${WAIT}s; see $LOG"
