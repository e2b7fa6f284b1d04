#!/usr/bin/env bash
# Install the Debian packages sockhop's build and tests need, once. Retries:
# on a fresh machine the first install has failed on missing archives before.
# With arguments, installs those packages instead, without their recommends
# (e2e/kernels/matrix.sh).
set -euo pipefail

pkgs=(clang llvm libbpf-dev iproute2 iptables util-linux)
# prometheus: its promtool checks and unit-tests the chart's alert rules and
# dashboard queries (charts/sockhop). Installed without its recommends (the node
# exporter); sockhop's scripts start no Prometheus service from it.
norecommends=(prometheus)

missing() {
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
	done
}

# install [apt-get install options --] PACKAGE...
install() {
	local opts=()
	while [ "$1" != "--" ]; do opts+=("$1"); shift; done
	shift
	[ $# -eq 0 ] && return 0
	echo "installing: $*"
	export DEBIAN_FRONTEND=noninteractive
	for attempt in 1 2 3; do
		if apt-get update -q && apt-get install -y -q "${opts[@]}" "$@"; then
			return 0
		fi
		echo "apt-get failed (attempt $attempt); repairing and retrying" >&2
		apt-get install -f -y -q || true
		sleep 5
	done
	return 1
}

if [ $# -gt 0 ]; then
	mapfile -t need < <(missing "$@")
	install --no-install-recommends -- "${need[@]}"
	exit
fi
mapfile -t need < <(missing "${pkgs[@]}")
install -- "${need[@]}"
mapfile -t need < <(missing "${norecommends[@]}")
install --no-install-recommends -- "${need[@]}"
