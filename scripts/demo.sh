#!/bin/sh
# The main job: bhyvesupd on a simulated FreeBSD host (rooted at ./sim-host, or $1), with
# the example guests from etc/examples defined and started. Stop it with ^C: the
# simulated guests are shut down with it.
#   In another terminal:  .venv/bin/bhyvesupctl -s ./sim-host/var/run/bhyvesupd/bhyvesupd.sock status
set -eu
cd "$(dirname "$0")/.."
. scripts/venv.sh
root=${1:-./sim-host}
[ $# -gt 0 ] && shift  # the rest goes to bhyvesupd (e.g. --guest-engine qemu)
echo "bhyvesupd on a simulated host in $root; control socket $root/var/run/bhyvesupd/bhyvesupd.sock" >&2
exec "$VENV/bin/bhyvesupd" --sim "$root" "$@"
