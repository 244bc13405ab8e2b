#!/usr/bin/env bash
# Screenshot a page in headless Chromium (Debian's package `chromium`), the network off:
#   docs/screenshots/shoot.sh <url> <out.png> [width,height]
# Every host but 127.0.0.1 fails to resolve, and no proxy is used, so a page that needs the
# internet shows it. The flags keep Chromium from calling home (its calls would be refused).
set -euo pipefail
url="$1" out="$2" size="${3:-1400,900}"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --no-proxy-server \
  --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
  --window-size="$size" --virtual-time-budget=15000 --screenshot="$out" "$url" 2>/dev/null
