#!/bin/sh
# Build (or reuse) the real guest's boot image for the QEMU guest engine: Debian's cloud
# kernel and a busybox initramfs with qemu-ga, cached in $BHYVESUP_GUEST_CACHE
# (default ~/.cache/bhyvesup/guest-image), never committed. Prints the image's JSON.
# Needs: apt (network for the kernel .deb), busybox-static, qemu-guest-agent, cpio, kmod.
set -eu
cd "$(dirname "$0")/.."
. scripts/venv.sh
exec "$VENV/bin/python" -m supervisor.vmm.sim.guestimage "$@"
