#!/usr/bin/env bash
# Installs the Debian packages that tests and benchmarks need, when missing.
# Runs as root on the project's machines; elsewhere it says what is missing.
set -euo pipefail
need=()
command -v nvcc >/dev/null 2>&1 || true   # optional: CUDA compile checks skip without it
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)   # benchmarks.transport baseline
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)   # cluster membership (tests, benchmarks.cluster)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing Debian packages (install as root): ${need[*]}" >&2
  fi
fi
