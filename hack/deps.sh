#!/usr/bin/env bash
# Install the Debian packages sockhop's build and tests need, once. Retries:
# on a fresh machine the first install has failed on missing archives before.
set -euo pipefail

pkgs=(clang llvm libbpf-dev iproute2 iptables util-linux)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
for attempt in 1 2 3; do
	if apt-get update -q && apt-get install -y -q "${missing[@]}"; then
		exit 0
	fi
	echo "apt-get failed (attempt $attempt); repairing and retrying" >&2
	apt-get install -f -y -q || true
	sleep 5
done
exit 1
