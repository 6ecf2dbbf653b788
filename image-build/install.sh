#!/usr/bin/env bash
# Install AFRA on a Debian 12 host (a Raspberry Pi OS image or a test VM) as a systemd service.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/afra
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
apt-get install -y -q --no-install-recommends python3 python3-venv
id afra >/dev/null 2>&1 || useradd --system --home-dir /var/lib/afra --shell /usr/sbin/nologin afra
install -d -o afra -g afra -m 0750 /var/lib/afra
install -d -m 0755 /etc/afra "$prefix"
cp -r "$src/firmware" "$src/web-setup" "$src/pyproject.toml" "$src/README.md" "$prefix/"
python3 -m venv "$prefix/.venv"
"$prefix/.venv/bin/pip" install -q "$prefix"
if [ ! -f /etc/afra/afra.toml ]; then
  cat > /etc/afra/afra.toml <<'TOML'
# Edit the peers and the PACS, then: systemctl restart afra. Keys: docs/configuration.md
[box]
data_dir = "/var/lib/afra"

[dicom]
ae_title = "AFRA"
port = 11112
allow_any_peer = false
# [[dicom.peers]]
# ae_title = "PACS"
# host = "10.0.0.5"
TOML
fi
install -m 0644 "$src/image-build/afra.service" /etc/systemd/system/afra.service
systemctl daemon-reload
systemctl enable afra
"$prefix/.venv/bin/afra" --config /etc/afra/afra.toml check-config >/dev/null
# The setup wizard changes the wired connection through NetworkManager as the afra user.
if [ -d /etc/polkit-1/rules.d ]; then
  install -m 0644 "$src/image-build/50-afra-network.rules" /etc/polkit-1/rules.d/
fi
# The per-device setup code: printed once, for the box's label; only its hash is kept.
if [ ! -f /var/lib/afra/web/setup-code.hash ]; then
  code="$(runuser -u afra -- "$prefix/.venv/bin/afra" --config /etc/afra/afra.toml setup-code)"
  echo "Setup code for the label of this box: $code"
fi
echo "AFRA installed; edit /etc/afra/afra.toml, then: systemctl start afra"
