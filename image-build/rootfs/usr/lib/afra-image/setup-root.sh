#!/bin/sh
# Runs inside the new root (chroot, arm64 through qemu-user) during `make image`, then is
# removed: the afra user, AFRA's virtual environment, the units, the initramfs, and nothing
# that must differ from box to box.
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin

# The afra user and the gpio group (usr/lib/sysusers.d/afra.conf).
systemd-sysusers

# AFRA and its dependencies, from the wheels fetched for aarch64.
python3 -m venv /opt/afra/venv
/opt/afra/venv/bin/pip install --quiet --no-index --no-cache-dir --find-links /tmp/wheels afra
# Byte code that is used without looking at the source's time stamp: the root is read-only
# (nothing could be written back) and EROFS gets one fixed time stamp for every file, so
# time-stamped .pyc files would all look stale and every start would compile in memory
# (measured under qemu-user: 16.8 s to import the appliance, 5.1 s with these).
/opt/afra/venv/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
  /opt/afra/venv/lib /usr/lib/python3.11 /usr/lib/python3/dist-packages >/dev/null
/opt/afra/venv/bin/afra --version

# Units: AFRA's, time sync, the network. Jobs that expect a writable root are masked.
systemctl enable afra.service afra-identity.service afra-selftest.service
systemctl enable systemd-timesyncd.service NetworkManager.service
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
  e2scrub_reap.service systemd-machine-id-commit.service; do
  systemctl mask "$unit"
done
systemctl set-default multi-user.target

# Mount points on the read-only root: the boot partition (firmware, boot state) and the
# data partition. Partitions are found by their labels (etc/fstab); systemd's GPT
# auto-discovery would mount the ESP and the XBOOTLDR partitions of their own accord.
mkdir -p /data /boot/firmware /etc/systemd/system-generators
ln -sf /dev/null /etc/systemd/system-generators/systemd-gpt-auto-generator

# /etc is read-only on the box: resolv.conf is NetworkManager's file in /run; the host name
# is set at each boot (afra-identity.service), this one is only the fallback.
ln -sf ../run/NetworkManager/resolv.conf /etc/resolv.conf
rm -f /etc/NetworkManager/dispatcher.d/01-ifupdown  # no ifupdown on the box
echo afra > /etc/hostname

# No password anywhere: root is locked, afra has no login.
usermod --lock root
usermod --lock afra

# Kernel modules a box never loads: sound, cameras and TV, Wi-Fi and Bluetooth (the box is
# on the center's wired LAN), InfiniBand, industrial I/O, staging drivers, and wired NICs
# other than the Pi's own (Broadcom); USB network adapters stay. About 130 MB less to
# carry in every update.
for kdir in /usr/lib/modules/*/kernel; do
  rm -rf "$kdir/sound" "$kdir/drivers/media" "$kdir/drivers/net/wireless" \
    "$kdir/drivers/infiniband" "$kdir/drivers/staging" "$kdir/drivers/iio" "$kdir/drivers/isdn" \
    "$kdir/drivers/bluetooth" "$kdir/net/bluetooth" "$kdir/net/wireless" "$kdir/net/mac80211"
  find "$kdir/drivers/net/ethernet" -mindepth 1 -maxdepth 1 ! -name broadcom -exec rm -rf {} +
done
for kver in $(ls /usr/lib/modules); do depmod -a "$kver"; done

# The initramfs, once, with the list of modules in /etc/initramfs-tools/modules.
rm -f /usr/sbin/update-initramfs
dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
update-initramfs -c -k all

# Per-box state is made on the box: an empty machine-id (systemd gives each boot one);
# no SSH host keys (there is no SSH server); no apt lists, caches or logs.
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
  /var/cache/debconf/*-old /var/log/*.log /var/log/apt/* /root/.cache
