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
#
# It installs its own datapath under a bpffs directory of its own and removes
# it, its cgroup and its network namespace at the end, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-5}
shift || true
sizes=("${@:-64 1024 16384}")
read -r -a sizes <<<"${sizes[*]}"
secs=${SOCKPERF_SECONDS:-4}
cpu=${SOCKPERF_CPU:-1}
sockhop=${SOCKHOP:-bin/sockhop}

[ "$(id -u)" -eq 0 ] || { echo "bench-sockperf: run as root (it loads BPF programs)" >&2; exit 1; }
command -v sockperf >/dev/null || { echo "bench-sockperf: sockperf is not installed (hack/deps.sh sockperf)" >&2; exit 1; }
[ -x "$sockhop" ] || { echo "bench-sockperf: $sockhop not built (make build)" >&2; exit 1; }

if [ -d /sys/fs/cgroup/unified ] && grep -q " /sys/fs/cgroup/unified cgroup2 " /proc/mounts; then
	root=/sys/fs/cgroup/unified
else
	root=/sys/fs/cgroup
fi
name=sockhop-sockperf-$$
cg=$root/$name
pin=/sys/fs/bpf/$name
ns=$name
server=

cleanup() {
	if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
	"$sockhop" --bpffs-dir "$pin" uninstall --yes >/dev/null 2>&1 || true
	ip netns del "$ns" 2>/dev/null || true
	rmdir "$cg/pod" "$cg" 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$cg/pod"
ip netns add "$ns"
ip -n "$ns" link set lo up

# run_as UID CMD...: join the pod's cgroup first (ip netns exec remounts /sys),
# then the namespace, the uid and the CPU; every step execs the next, so the
# PID of a backgrounded run_as is CMD's.
run_as() {
	local uid=$1
	shift
	exec bash -c 'echo $$ >"$0/pod/cgroup.procs"; exec ip netns exec "$1" setpriv --reuid "$2" --regid "$2" --clear-groups taskset -c "$3" "${@:4}"' \
		"$cg" "$ns" "$uid" "$cpu" "$@"
}

redirected() {
	"$sockhop" --bpffs-dir "$pin" status -o json --skip-self-test 2>/dev/null |
		sed -n 's/.*"redirected_bytes": *\([0-9]*\).*/\1/p' | head -1
}

# p50 SIZE: one sockperf run, its p50 in µs.
p50() {
	run_as 1337 sockperf server --tcp -i 127.0.0.1 -p 7000 >/dev/null 2>&1 &
	server=$!
	sleep 0.5
	local out
	out=$(run_as 1000 sockperf ping-pong --tcp -i 127.0.0.1 -p 7000 -t "$secs" -m "$1" 2>&1)
	kill "$server" 2>/dev/null || true
	wait "$server" 2>/dev/null || true
	server=
	sed -n 's/.*percentile 50.000 = *\([0-9.]*\).*/\1/p' <<<"$out" | head -1
}

echo "sockperf ping-pong, uid 1000 -> uid 1337 server, CPU $cpu, ${secs}s per run, $rounds pairs per size; $(uname -r); load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$sockhop" --bpffs-dir "$pin" attach "$name/pod" >/dev/null
"$sockhop" --bpffs-dir "$pin" detach "$name/pod" >/dev/null
for size in "${sizes[@]}"; do
	ratios=()
	for r in $(seq "$rounds"); do
		off=$(p50 "$size")
		"$sockhop" --bpffs-dir "$pin" attach "$name/pod" >/dev/null
		before=$(redirected)
		on=$(p50 "$size")
		after=$(redirected)
		"$sockhop" --bpffs-dir "$pin" detach "$name/pod" >/dev/null
		if [ -z "$off" ] || [ -z "$on" ]; then
			echo "bench-sockperf: sockperf printed no p50 (size $size, round $r)" >&2
			exit 1
		fi
		if [ -z "$before" ] || [ -z "$after" ] || [ "$after" -le "$before" ]; then
			echo "bench-sockperf: the accelerated run redirected nothing (size $size, round $r): not measured" >&2
			exit 1
		fi
		ratio=$(awk -v a="$off" -v b="$on" 'BEGIN { printf "%.2f", a / b }')
		ratios+=("$ratio")
		printf '%6d B  round %d: p50 plain %7.3f µs, sockhop %7.3f µs: %s× (%s MB redirected)\n' \
			"$size" "$r" "$off" "$on" "$ratio" "$(awk -v n=$((after - before)) 'BEGIN { printf "%.0f", n / 1e6 }')"
	done
	printf '%s\n' "${ratios[@]}" | sort -n | awk -v size="$size" '
		{ v[NR] = $1 }
		END { printf "%6d B  median %.2f× (%.2f–%.2f, %d pairs)\n", size, (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), v[1], v[NR], NR }'
done
