#!/usr/bin/env bash
# Sets up what `make bench-peers` needs beside the main .venv: the Debian
# packages (redis-server, libibverbs1 that Mooncake links even for TCP) and a
# separate virtual environment, .venv-peers, holding LMCache 0.5.6, Mooncake
# Store and redis-py+hiredis (about 2 GB: never in .venv, never in `make test`).
# Idempotent: the stamp .venv-peers/.installed skips the pip steps.
set -euo pipefail
PY=${PY:-python3}
VENV=${PEERS_VENV:-.venv-peers}
here=$(cd "$(dirname "$0")" && pwd)

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
ldconfig -p | grep -q 'libibverbs.so.1 ' || need+=(libibverbs1)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[$(date +%T)] apt: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing Debian packages (install as root): ${need[*]}" >&2
  fi
fi

if [ -f "$VENV/.installed" ]; then
  echo "$VENV ready (remove $VENV/.installed to reinstall)"
  exit 0
fi
echo "[$(date +%T)] 1/4 $VENV and pip"
$PY -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
echo "[$(date +%T)] 2/4 torch, the local CPU build"
"$VENV/bin/pip" install -q -c "$here/constraints-peers.txt" torch==2.13.0
echo "[$(date +%T)] 3/4 lmcache==0.5.6 (pulls cupy, cuda-python, transformers: 3-10 minutes)"
"$VENV/bin/pip" install -q -c "$here/constraints-peers.txt" lmcache==0.5.6
echo "[$(date +%T)] 4/4 mooncake-transfer-engine-non-cuda, redis[hiredis], matplotlib"
"$VENV/bin/pip" install -q -c "$here/constraints-peers.txt" \
  mooncake-transfer-engine-non-cuda 'redis[hiredis]' matplotlib numpy
"$VENV/bin/python" -c "import torch; assert torch.__version__.endswith('+cpu'), torch.__version__"
echo "[$(date +%T)] $VENV ready"
touch "$VENV/.installed"
