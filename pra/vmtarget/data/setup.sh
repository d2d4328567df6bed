#!/bin/bash
# Runs inside the debootstrapped tree (chroot) after data/rootfs/ was copied over it.
# Everything here is configuration of Debian packages already installed: nothing is
# downloaded. Args: none. Root's authorized_keys is written by the builder.
set -euo pipefail
export LC_ALL=C

# Host keys are per machine: the image carries none, each boot of a fresh overlay makes
# its own (pra-hostkey.service) and shows it on the console.
rm -f /etc/ssh/ssh_host_*

# A tiny container image as a plain rootfs tarball: busybox-static and a page to serve.
root=$(mktemp -d)
mkdir -p "$root/bin" "$root/www" "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
echo "pra-tiny" >"$root/www/index.html"
install -d /opt/pra-vm
tar -C "$root" -cf /opt/pra-vm/tiny-rootfs.tar .
rm -rf "$root"

systemctl enable systemd-networkd ssh systemd-resolved unbound caddy \
    pra-hostkey.service pra-ready.service pra-demo-containers.service
# Nothing is online to wait for (QEMU's restricted user network), and nothing in the VM
# needs timers firing during tests.
systemctl mask systemd-networkd-wait-online.service e2scrub_reap.service \
    e2scrub_all.timer fstrim.timer apt-daily.timer apt-daily-upgrade.timer \
    logrotate.timer systemd-timesyncd.service cron.service \
    getty@tty1.service serial-getty@ttyS0.service 2>/dev/null || true
# unbound's resolvconf helper fails on a resolved host ("Link lo is loopback device").
systemctl mask unbound-resolvconf.service
ln -sf /run/systemd/resolve/stub-resolv.conf /etc/resolv.conf

install -d -m 0700 /root/.ssh
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
