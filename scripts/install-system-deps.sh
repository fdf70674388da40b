#!/usr/bin/env bash
# Debian packages the tests and tools need. Run as root (CI runs as root); idempotent.
#   gpsd, gpsd-clients: gpsfake and a real gpsd for the GPS tests.
#   libasound2-dev: headers simpleaudio builds against; alsa-utils: aplay (fallback player).
#   chromium: the real browser the MDT page is tested in (Playwright drives /usr/bin/chromium).
#   iproute2, nftables: ip netns/veth and tc tbf, nft random drop: the emulated LTE link of the sync tests.
set -euo pipefail
PACKAGES=(gpsd gpsd-clients libasound2-dev alsa-utils chromium iproute2 nftables)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: need root to install: ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
