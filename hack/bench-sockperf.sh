#!/usr/bin/env bash
# A third-party cross-check of sockhop's gain: Debian's sockperf (C, not ours)
# ping-pong between an "application" (uid 1000) and a "sidecar" server (uid
# 1337) in one cgroup and one network namespace, on one CPU, plain TCP and
# sockhop with its default options alternately, ROUNDS pairs per message size.
# Prints each round's p50 (sockperf reports half the round trip), each pair's
# ratio, and per size the median ratio with its range; and checks that the
# accelerated rounds were really redirected (sockhop's counters).
#
#   sudo make bench-sockperf            # or: sudo hack/bench-sockperf.sh [ROUNDS] [SIZES...]
#   SOCKHOP_ATTACH_FLAGS=--syscall-guard=false ...: sockhop with other options
set -euo pipefail
cd "$(dirname "$0")/.."
. hack/lib/benchpod.sh

rounds=${1:-5}
shift || true
read -r -a sizes <<<"${*:-64 1024 16384}"
secs=${SOCKPERF_SECONDS:-4}
cpu=${SOCKPERF_CPU:-1}
command -v sockperf >/dev/null || { echo "$0: sockperf is not installed (hack/deps.sh sockperf)" >&2; exit 1; }

# p50 SIZE: one sockperf run, its p50 in µs.
p50() {
	background 1337 sockperf server --tcp -i 127.0.0.1 -p 7000 >/dev/null 2>&1
	sleep 0.5
	local out
	out=$(run_as 1000 sockperf ping-pong --tcp -i 127.0.0.1 -p 7000 -t "$secs" -m "$1" 2>&1)
	stop_background
	sed -n 's/.*percentile 50.000 = *\([0-9.]*\).*/\1/p' <<<"$out" | head -1
}

benchpod_up
echo "sockperf ping-pong, uid 1000 -> uid 1337 server, CPU $cpu, ${secs}s per run, $rounds pairs per size; $(uname -r); options: ${SOCKHOP_ATTACH_FLAGS:-default}; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for size in "${sizes[@]}"; do
	ratios=()
	for r in $(seq "$rounds"); do
		off=$(p50 "$size")
		accelerate
		before=$(redirected_bytes)
		on=$(p50 "$size")
		after=$(redirected_bytes)
		plain
		[ -n "$off" ] && [ -n "$on" ] || { echo "$0: sockperf printed no p50 (size $size, round $r)" >&2; exit 1; }
		want_redirected "$before" "$after" "size $size, round $r"
		ratios+=("$(ratio "$off" "$on")")
		printf '%6d B  round %d: p50 plain %7.3f µs, sockhop %7.3f µs: %s× (%s MB redirected)\n' \
			"$size" "$r" "$off" "$on" "${ratios[-1]}" $(((after - before) / 1000000))
	done
	median_range "$(printf '%6d B ' "$size")" "${ratios[@]}"
done
