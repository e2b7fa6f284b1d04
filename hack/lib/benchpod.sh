# shellcheck shell=bash
# A throw-away "pod" for the third-party benchmarks (hack/bench-*.sh): a cgroup
# of its own, a network namespace of its own and a sockhop datapath under a
# bpffs directory of its own, all removed at exit whatever happens. Source it,
# then: benchpod_up; run_as UID CMD... ; accelerate / plain; redirected_bytes.
#
# Needs root, bin/sockhop (make build) or $SOCKHOP, and $cpu (the CPU every
# process is pinned to).

sockhop=${SOCKHOP:-bin/sockhop}
benchpod=sockhop-bench-$$
benchpod_pids=()

benchpod_down() {
	local p
	for p in "${benchpod_pids[@]}"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	"$sockhop" --bpffs-dir "/sys/fs/bpf/$benchpod" uninstall --yes >/dev/null 2>&1 || true
	ip netns del "$benchpod" 2>/dev/null || true
	[ -n "${benchpod_cg:-}" ] && rmdir "$benchpod_cg/pod" "$benchpod_cg" 2>/dev/null || true
}

benchpod_up() {
	[ "$(id -u)" -eq 0 ] || { echo "$0: run as root (it loads BPF programs)" >&2; exit 1; }
	[ -x "$sockhop" ] || { echo "$0: $sockhop not built (make build)" >&2; exit 1; }
	local root=/sys/fs/cgroup
	if grep -q " /sys/fs/cgroup/unified cgroup2 " /proc/mounts; then
		root=/sys/fs/cgroup/unified
	fi
	benchpod_cg=$root/$benchpod
	trap benchpod_down EXIT
	mkdir -p "$benchpod_cg/pod"
	ip netns add "$benchpod"
	ip -n "$benchpod" link set lo up
	# Install the datapath (default options) once, outside the timed runs.
	accelerate
	plain
}

# run_as UID CMD...: join the pod's cgroup first (ip netns exec remounts /sys),
# then the namespace, the uid and the CPU; every step execs the next, so the
# PID of a backgrounded run_as is CMD's.
run_as() {
	local uid=$1
	shift
	exec bash -c 'echo $$ >"$0/pod/cgroup.procs"; exec ip netns exec "$1" setpriv --reuid "$2" --regid "$2" --clear-groups taskset -c "$3" "${@:4}"' \
		"$benchpod_cg" "$benchpod" "$uid" "$cpu" "$@"
}

# background UID CMD...: run_as in the background, stopped at exit.
background() {
	run_as "$@" &
	benchpod_pids+=($!)
}

# stop_background: stop what background started.
stop_background() {
	local p
	for p in "${benchpod_pids[@]}"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	benchpod_pids=()
}

# SOCKHOP_ATTACH_FLAGS: datapath options other than the defaults, e.g.
# --syscall-guard=false (the first attach installs the datapath with them).
accelerate() {
	# shellcheck disable=SC2086 # several flags
	"$sockhop" --bpffs-dir "/sys/fs/bpf/$benchpod" attach "$benchpod/pod" ${SOCKHOP_ATTACH_FLAGS:-} >/dev/null
}
# plain: detach the pod; with nothing left to guard the node-wide
# tracepoints go too, so that plain runs are plain TCP as without sockhop
# (checked: a plain run with them attached would hide what they cost).
plain() {
	"$sockhop" --bpffs-dir "/sys/fs/bpf/$benchpod" detach "$benchpod/pod" >/dev/null
	if "$sockhop" --bpffs-dir "/sys/fs/bpf/$benchpod" status -o json --skip-self-test 2>/dev/null |
		grep -q '"node_tracepoints_attached": *true'; then
		echo "$0: the node-wide tracepoints are still attached after detach: plain runs would not be plain TCP" >&2
		exit 1
	fi
}

# redirected_bytes: the datapath's redirected byte counter.
redirected_bytes() {
	"$sockhop" --bpffs-dir "/sys/fs/bpf/$benchpod" status -o json --skip-self-test 2>/dev/null |
		sed -n 's/.*"redirected_bytes": *\([0-9]*\).*/\1/p' | head -1
}

# ratio A B: A / B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# median_range LABEL RATIO...: "LABEL median M× (MIN–MAX, N pairs)".
median_range() {
	local label=$1
	shift
	printf '%s\n' "$@" | sort -n | awk -v label="$label" '
		{ v[NR] = $1 }
		END { printf "%s median %.2f× (%.2f–%.2f, %d pairs)\n", label, (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), v[1], v[NR], NR }'
}

# want_redirected BEFORE AFTER WHAT: fail unless the counter grew.
want_redirected() {
	if [ -z "$1" ] || [ -z "$2" ] || [ "$2" -le "$1" ]; then
		echo "$0: the accelerated run redirected nothing ($3): not measured" >&2
		exit 1
	fi
}
