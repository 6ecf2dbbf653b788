#!/usr/bin/env bash
# `make image`: the AFRA appliance image for the Raspberry Pi 4 (arm64 Debian 12) from
# Debian's packages alone, and its signed RAUC update bundle. Runs as root on an x86-64
# Debian 12 builder. Needs no loop device, kpartx or device-mapper: every file system is
# made in a file and the disk image is put together with sfdisk and dd.
#
#   build/afra-<version>-arm64.img.xz  (+ .sha256)   the card image (`make label` writes it)
#   build/afra-<version>-arm64.img                   the same, uncompressed (image-test boots it)
#   build/afra-<version>-arm64.raucb   (+ .sha256)   the update bundle (root + kernel slots)
#   build/afra-<version>-build.log                   everything below, with each stage's time
#
# Stages: host tools; base system (mmdebstrap, cached in build/cache by the hash of
# packages.txt and the bootstrap options); AFRA into the root (wheels, users, units,
# settings, initramfs); partition images; disk image; bundle.
#
# Environment:
#   AFRA_IMAGE_VERSION  version of the image and the bundle (default: afra's own version)
#   AFRA_SIGNING_KEY, AFRA_SIGNING_CERT, AFRA_KEYRING
#                       the bundle signing key, its certificate, and the CA certificate baked
#                       into the image as RAUC's keyring. Default: a development CA made once
#                       in build/keys. Boxes that leave the building get a key kept offline.
#   AFRA_BUILD_DIR      where everything goes (default: build/ in the checkout)
#   AFRA_MIRROR, AFRA_SECURITY_MIRROR   Debian mirrors (default: deb.debian.org)
#   PYTHON              the Python whose pip fetches the aarch64 wheels (default: .venv's)
#   AFRA_SKIP_XZ        set: no .img.xz (quicker rounds while working on the image)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out=${AFRA_BUILD_DIR:-$top/build}
python=${PYTHON:-$top/.venv/bin/python}
mirror=${AFRA_MIRROR:-http://deb.debian.org/debian}
security=${AFRA_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
version=${AFRA_IMAGE_VERSION:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$top/firmware/afra/__init__.py")}
name=afra-$version-arm64
compatible=afra-rpi4-arm64

# Partition sizes in MiB. The data partition is grown to fill the card at first boot.
boot_mib=64
kernel_mib=64
root_mib=1024
data_mib=256

[ "$(id -u)" = 0 ] || { echo "make image: run as root (mmdebstrap, chroot, file ownership)" >&2; exit 1; }
[ -x "$python" ] || { echo "make image: $python is missing (make venv)" >&2; exit 1; }
# A PEP 440 version: boxes install only bundles newer than what they run (by this order),
# so an image with a version they cannot order would never take another update.
"$python" -c 'import sys; from packaging.version import Version; Version(sys.argv[1])' \
  "$version" 2>/dev/null || { echo "make image: '$version' is not a PEP 440 version" >&2; exit 1; }

mkdir -p "$out/cache"
log=$out/$name-build.log
exec > >(tee "$log") 2>&1
started=$(date +%s)
stage_start=$started
stage() {
  local now; now=$(date +%s)
  [ -z "${stage_name:-}" ] || echo "== done: $stage_name ($((now - stage_start)) s)"
  stage_name=$1; stage_start=$now
  echo "== $stage_name"
}

# -- host tools ------------------------------------------------------------------------
stage "host tools"
need=()
for pair in mmdebstrap:mmdebstrap qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support \
  arch-test:arch-test mkimage:u-boot-tools mkenvimage:u-boot-tools fw_printenv:libubootenv-tool \
  rauc:rauc mksquashfs:squashfs-tools mkfs.erofs:erofs-utils mkfs.vfat:dosfstools mcopy:mtools \
  sfdisk:fdisk mkfs.ext4:e2fsprogs xz:xz-utils openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
# arm64 programs in the root run through qemu-user; PID 1 here may not be systemd, so the
# handler is registered by hand when it is missing.
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
arch-test arm64 >/dev/null || { echo "make image: arm64 binaries do not run here (binfmt)" >&2; exit 1; }

# -- signing keys -------------------------------------------------------------------------
stage "signing keys"
if [ -n "${AFRA_SIGNING_KEY:-}" ]; then
  key=$AFRA_SIGNING_KEY; cert=${AFRA_SIGNING_CERT:?AFRA_SIGNING_CERT goes with AFRA_SIGNING_KEY}
  keyring=${AFRA_KEYRING:?AFRA_KEYRING goes with AFRA_SIGNING_KEY}
else
  "$here/devkeys.sh" "$out/keys" "AFRA development"
  key=$out/keys/signing.key; cert=$out/keys/signing.pem; keyring=$out/keys/ca.pem
  echo "signing with the development CA in $out/keys (not for boxes that leave the building)"
fi

# -- base system ----------------------------------------------------------------------------
stage "base system"
mapfile -t packages < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/packages.txt" | tr -d ' ')
# mkinitramfs runs once, at the end of the next stage, with this project's configuration:
# during the bootstrap it would run twice (kernel and trigger), minutes each under qemu-user.
defer_initramfs='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && printf "#!/bin/sh\necho update-initramfs: left to the image build\n" > "$1/usr/sbin/update-initramfs" && chmod 0755 "$1/usr/sbin/update-initramfs"'
fetch_boot_debs='mkdir -p "$1/var/cache/afra-boot-debs" && chroot "$1" sh -c "cd /var/cache/afra-boot-debs && apt-get download -q raspi-firmware u-boot-rpi"'
bootstrap=(
  --arch=arm64 --variant=minbase --mode=root --format=tar
  --aptopt='APT::Install-Recommends "false"'
  --aptopt='Acquire::Languages "none"'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --essential-hook="$defer_initramfs"
  --include="$(IFS=,; echo "${packages[*]}")"
  --customize-hook="$fetch_boot_debs"
)
suites=(
  "deb $mirror bookworm main non-free-firmware"
  "deb $mirror bookworm-updates main non-free-firmware"
  "deb $security bookworm-security main non-free-firmware"
)
base_key=$(printf '%s\n' "${bootstrap[@]}" "${suites[@]}" "${packages[@]}" | sha256sum | cut -c1-16)
base=$out/cache/base-$base_key.tar
if [ -f "$base" ]; then
  echo "reusing $base"
else
  rm -f "$out"/cache/base-*.tar
  mmdebstrap "${bootstrap[@]}" bookworm "$base.part" "${suites[@]}"
  mv "$base.part" "$base"
fi

# -- AFRA into the root ----------------------------------------------------------------------
stage "wheels"
wheels=$out/wheels
rm -rf "$wheels"; mkdir -p "$wheels"
# Built from a copy: setuptools would leave its own build/ folders in the checkout.
src=$out/src
rm -rf "$src"; mkdir -p "$src"
cp -a "$top/pyproject.toml" "$top/README.md" "$top/firmware" "$top/web-setup" "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m pip wheel -q --no-deps --wheel-dir "$wheels" "$src"
rm -rf "$src"
# The same versions as the tested development environment where they exist for aarch64.
"$python" -m pip freeze --exclude-editable | grep -v '^-e' > "$out/constraints.txt"
"$python" -m pip download -q --dest "$wheels" --only-binary=:all: --python-version 3.11 \
  --implementation cp --abi cp311 --platform manylinux_2_36_aarch64 \
  --platform manylinux_2_34_aarch64 --platform manylinux_2_28_aarch64 \
  --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform linux_aarch64 \
  --constraint "$out/constraints.txt" "$(ls "$wheels"/afra-*.whl)" \
  lgpio  # the Pi's pin library: its marker is for aarch64, which pip here is not
ls "$wheels"

stage "root file system"
root=$out/root
rm -rf "$root"; mkdir -p "$root"
tar -C "$root" --numeric-owner -xpf "$base"
boot_debs=$out/boot-debs
rm -rf "$boot_debs"; mv "$root/var/cache/afra-boot-debs" "$boot_debs"
cp -a "$here/rootfs/." "$root/"
install -m 0644 "$keyring" "$root/etc/rauc/keyring.pem"
mkdir -p "$root/tmp/wheels"; cp "$wheels"/*.whl "$root/tmp/wheels/"
epoch=$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)
cat >> "$root/usr/lib/os-release" <<EOF
IMAGE_ID=afra
IMAGE_VERSION=$version
EOF
echo "afra $version $(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ) $compatible" > "$root/etc/afra-release"
sed -i "s/@COMPATIBLE@/$compatible/" "$root/etc/rauc/system.conf"

in_root() {
  # A mount namespace of its own: /proc and /dev go away with it, whatever happens.
  unshare --mount --propagation private -- sh -ec '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$root/run"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"' \
    in_root "$root" "$@"
}
in_root /bin/sh -e /usr/lib/afra-image/setup-root.sh "$version"
rm -rf "$root/tmp/wheels" "$root/usr/lib/afra-image"
touch -d "@$epoch" "$root/usr/lib/clock-epoch"

# -- partition images -------------------------------------------------------------------------
stage "partition images"
parts=$out/parts
rm -rf "$parts"; mkdir -p "$parts"
kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)
kver=${kernel##*/vmlinuz-}
initrd=$root/boot/initrd.img-$kver
[ -f "$initrd" ] || { echo "make image: no initramfs for $kver" >&2; exit 1; }
# kernel slot: the kernel and its initramfs (U-Boot reads FAT, not EROFS)
kmib=$(( ($(stat -c %s "$kernel") + $(stat -c %s "$initrd")) / 1048576 + 8 ))
[ "$kmib" -le "$kernel_mib" ] || { echo "make image: kernel slot needs ${kmib} MiB" >&2; exit 1; }
mkfs.vfat -C -n AFRAKERNEL "$parts/kernel.vfat" $((kmib * 1024)) >/dev/null
mcopy -i "$parts/kernel.vfat" "$kernel" ::Image
mcopy -i "$parts/kernel.vfat" "$initrd" ::initrd.img
echo "$kver" > "$parts/kernel-version"
mcopy -i "$parts/kernel.vfat" "$parts/kernel-version" ::kernel-version
# boot partition: Pi firmware, U-Boot, device trees, the boot script and the boot state
mkdir -p "$parts/boot" "$parts/debs"
for deb in "$boot_debs"/*.deb; do dpkg-deb -x "$deb" "$parts/debs"; done
cp "$parts"/debs/usr/lib/raspi-firmware/start4*.elf "$parts"/debs/usr/lib/raspi-firmware/fixup4*.dat "$parts/boot/"
cp "$parts/debs/usr/lib/u-boot/rpi_arm64/u-boot.bin" "$parts/boot/u-boot.bin"
cp "$root"/usr/lib/linux-image-"$kver"/broadcom/bcm2711-rpi-*.dtb "$parts/boot/"
cp "$here/boot/config.txt" "$parts/boot/config.txt"
mkimage -A arm64 -T script -C none -n "AFRA boot" -d "$here/boot/boot.cmd" "$parts/boot/boot.scr" >/dev/null
"$here/bootstate.sh" "$parts/boot"
cp "$here/boot/README.txt" "$parts/boot/README.txt"
mkfs.vfat -C -n AFRABOOT "$parts/boot.vfat" $((boot_mib * 1024)) >/dev/null
mcopy -s -i "$parts/boot.vfat" "$parts"/boot/* ::
rm -f "$root"/boot/vmlinuz-* "$root"/boot/initrd.img-*   # they live in the kernel slot
# root slot: EROFS, compressed, read-only
mkfs.erofs -zlz4hc -T "$epoch" --quiet "$parts/root.erofs" "$root"
rsize=$(stat -c %s "$parts/root.erofs")
[ "$rsize" -le $((root_mib * 1048576)) ] || { echo "make image: root is $rsize bytes" >&2; exit 1; }
# data partition: the folders the system keeps its state in, owned as the units expect
seed=$parts/data
afra_uid=$(awk -F: '$1 == "afra" {print $3}' "$root/etc/passwd")
timesync_uid=$(awk -F: '$1 == "systemd-timesync" {print $3}' "$root/etc/passwd")
mkdir -p "$seed/afra" "$seed/system/NetworkManager" "$seed/system/timesync" "$seed/system/rauc"
chown "$afra_uid:$afra_uid" "$seed/afra"; chmod 0750 "$seed/afra"
chown "$timesync_uid:$timesync_uid" "$seed/system/timesync"
chmod 0700 "$seed/system/NetworkManager" "$seed/system/rauc"
echo "afra-data 1" > "$seed/.afra-data"
truncate -s "${data_mib}M" "$parts/data.ext4"
mkfs.ext4 -q -F -L afra-data -E root_owner=0:0 -d "$seed" "$parts/data.ext4"

# -- disk image ----------------------------------------------------------------------------------
stage "disk image"
img=$out/$name.img
rm -f "$img" "$img.xz"
total_mib=$((1 + boot_mib + 2 * kernel_mib + 2 * root_mib + data_mib + 1))
truncate -s "${total_mib}M" "$img"
# GPT: the Pi 4 firmware boots it (EEPROM from 2020 on); systemd-repart grows the last
# partition at first boot. Types: ESP, XBOOTLDR (kernels), arm64 root, Linux data.
sfdisk --quiet "$img" <<EOF
label: gpt
first-lba: 2048
start=1MiB, size=${boot_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=afra-boot
size=${kernel_mib}MiB, type=BC13C2FF-59E6-4262-A352-B275FD6F7172, name=afra-kernel-a
size=${kernel_mib}MiB, type=BC13C2FF-59E6-4262-A352-B275FD6F7172, name=afra-kernel-b
size=${root_mib}MiB, type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE, name=afra-root-a
size=${root_mib}MiB, type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE, name=afra-root-b
size=${data_mib}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=afra-data
EOF
put() { dd if="$1" of="$img" bs=1M seek="$2" conv=notrunc,sparse status=none; }
put "$parts/boot.vfat" 1
put "$parts/kernel.vfat" $((1 + boot_mib))
put "$parts/root.erofs" $((1 + boot_mib + 2 * kernel_mib))
put "$parts/data.ext4" $((1 + boot_mib + 2 * kernel_mib + 2 * root_mib))
# Slot B stays empty until the first update; its attempts start at 0 (bootstate.sh).
if [ -n "${AFRA_SKIP_XZ:-}" ]; then  # quicker rounds while working on the image
  echo "AFRA_SKIP_XZ: no $name.img.xz this time"
else
  xz -T0 -3 --keep --force "$img"
  (cd "$out" && sha256sum "$name.img.xz" > "$name.img.xz.sha256")
fi

# -- update bundle ---------------------------------------------------------------------------------
stage "update bundle"
bdir=$out/bundle
rm -rf "$bdir" "$out/$name.raucb"; mkdir -p "$bdir"
cp "$parts/root.erofs" "$bdir/root.img"
cp "$parts/kernel.vfat" "$bdir/kernel.img"
cat > "$bdir/manifest.raucm" <<EOF
[update]
compatible=$compatible
version=$version
description=AFRA $version for the Raspberry Pi 4

[bundle]
format=verity

[image.rootfs]
filename=root.img

[image.kernel]
filename=kernel.img
EOF
# RAUC checks the signature it makes against the keyring, for code signing (as the box does).
printf '[system]\ncompatible=%s\nbootloader=noop\n[keyring]\npath=%s\ncheck-purpose=codesign\n' \
  "$compatible" "$keyring" > "$out/rauc-build.conf"
rauc --conf="$out/rauc-build.conf" bundle --cert="$cert" --key="$key" "$bdir" "$out/$name.raucb"
(cd "$out" && sha256sum "$name.raucb" > "$name.raucb.sha256")
rm -rf "$bdir"

stage "summary"
ended=$(date +%s)
[ -f "$out/$name.img.xz" ] && echo "image:  $out/$name.img.xz ($(stat -c %s "$out/$name.img.xz") bytes; $(stat -c %s "$img") uncompressed)"
echo "root:   $rsize bytes (EROFS, lz4hc), kernel $kver"
echo "bundle: $out/$name.raucb ($(stat -c %s "$out/$name.raucb") bytes)"
echo "build_time_s=$((ended - started))"
[ -f "$out/$name.img.xz" ] && echo "image_xz_bytes=$(stat -c %s "$out/$name.img.xz")"
echo "root_bytes=$rsize"
