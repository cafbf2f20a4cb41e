#!/bin/bash
# `make run`: celld --local in the foreground; once it answers, pushes
# examples/hello (unless it is already there) and says what to try next.
# Ctrl-C stops celld cleanly (apps' containers keep running and are picked up
# by the next `make run`, as after a cell restart).
set -uo pipefail
cd "$(dirname "$0")/.."
CELLD=target/release/celld
CELLCTL=target/release/cellctl
ROOTFS_DIR=${ROOTFS_DIR:-$PWD/rootfs/out}
API=${CELLD_API:-127.0.0.1:1801}

"$CELLD" --local --rootfs-dir "$ROOTFS_DIR" "$@" &
pid=$!
stop() { kill -INT "$pid" 2>/dev/null; wait "$pid"; exit 0; }
trap stop INT TERM

for _ in $(seq 1 300); do
  kill -0 "$pid" 2>/dev/null || { wait "$pid"; exit $?; }
  "$CELLCTL" --api "$API" apps >/dev/null 2>&1 && break
  sleep 0.2
done

if ! "$CELLCTL" --api "$API" app hello --guid >/dev/null 2>&1; then
  echo "make run: pushing examples/hello"
  "$CELLCTL" --api "$API" push examples/hello -m 64M || echo "make run: the push failed; celld keeps running"
fi
# The CF API's admin password: --cf-admin-password, else the one celld made
# once and kept in its depot (RUN_ARGS may name another depot).
DEPOT=/var/lib/celld
prev=
for a in "$@"; do [ "$prev" = --depot ] && DEPOT=$a; prev=$a; done
PASSWORD=${CELLD_CF_ADMIN_PASSWORD:-$(cat "$DEPOT/cf-api/admin-password" 2>/dev/null)}
cat <<MSG

  examples/hello runs at  http://hello.apps.localhost:8080/
  with the cf CLI:
    cf api http://127.0.0.1:9000 && cf auth admin $PASSWORD && cf target -o local -s dev
    cf apps; cf app hello; cf logs hello --recent; cf ssh hello
  try:
    curl http://hello.apps.localhost:8080/
    target/release/cellctl apps
    target/release/cellctl app hello
    target/release/cellctl logs hello --recent
    target/release/cellctl scale hello -i 2
    target/release/cellctl cells
  Ctrl-C stops celld.

MSG
wait "$pid"
