#!/usr/bin/env bash
# HTTP through a real proxy sidecar, with third-party parts only: wrk (the
# client application, uid 1000) -> HAProxy as the sidecar (uid 1337, HTTP
# mode, keep-alive to its upstream) -> HAProxy as the application (uid 1000,
# answers every request with a 1 KiB body). One cgroup, one network namespace,
# one CPU; plain TCP and sockhop with its default options alternately, ROUNDS
# pairs. Prints requests/s and p50 per round, and the medians of the ratios
# with their range; checks the accelerated rounds were really redirected.
#
#   sudo make bench-http                # or: sudo hack/bench-http.sh [ROUNDS]
#   SOCKHOP_ATTACH_FLAGS=--syscall-guard=false ...: sockhop with other options
set -euo pipefail
cd "$(dirname "$0")/.."
. hack/lib/benchpod.sh

rounds=${1:-5}
secs=${HTTP_SECONDS:-4}
conns=${HTTP_CONNS:-8}
body=${HTTP_BODY:-1024}
cpu=${HTTP_CPU:-1}
for tool in haproxy wrk; do
	command -v "$tool" >/dev/null || { echo "$0: $tool is not installed (hack/deps.sh haproxy wrk)" >&2; exit 1; }
done

benchpod_up
dir=$(mktemp -d)
trap 'benchpod_down; rm -rf "$dir"' EXIT
head -c "$body" /dev/zero | tr '\0' x >"$dir/body"
cat >"$dir/app.cfg" <<CFG
global
	nbthread 1
defaults
	mode http
	timeout connect 5s
	timeout client 30s
	timeout server 30s
frontend app
	bind 127.0.0.1:8081
	http-request return status 200 content-type text/plain file $dir/body
CFG
cat >"$dir/sidecar.cfg" <<CFG
global
	nbthread 1
defaults
	mode http
	timeout connect 5s
	timeout client 30s
	timeout server 30s
	option http-keep-alive
frontend sidecar
	bind 127.0.0.1:8080
	default_backend app
backend app
	http-reuse always
	server app 127.0.0.1:8081
CFG
chmod -R a+rX "$dir"

# run: one wrk run through fresh proxies; prints "RPS P50_US".
run() {
	background 1000 haproxy -db -f "$dir/app.cfg" >/dev/null 2>&1
	background 1337 haproxy -db -f "$dir/sidecar.cfg" >/dev/null 2>&1
	sleep 0.5
	local out
	out=$(run_as 1000 wrk -t1 -c"$conns" -d"${secs}s" --latency http://127.0.0.1:8080/ 2>&1)
	stop_background
	awk '
		/^Requests\/sec:/ { rps = $2 }
		$1 == "50%" { v = $2; if (v ~ /ms$/) { sub(/ms$/, "", v); v *= 1000 } else if (v ~ /us$/) { sub(/us$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1e6 }; p50 = v }
		/Non-2xx/ { bad = 1 }
		END { if (rps == "" || p50 == "" || bad) exit 1; print rps, p50 }' <<<"$out" ||
		{ echo "$0: wrk failed or got errors: $out" >&2; exit 1; }
}

echo "wrk -> HAProxy sidecar (uid 1337) -> HAProxy app (uid 1000), ${body} B bodies, $conns keep-alive connections, CPU $cpu, ${secs}s per run, $rounds pairs; $(uname -r); options: ${SOCKHOP_ATTACH_FLAGS:-default}; load: $(cut -d' ' -f1-3 /proc/loadavg)"
rps_ratios=()
p50_ratios=()
for r in $(seq "$rounds"); do
	read -r off_rps off_p50 <<<"$(run)"
	accelerate
	before=$(redirected_bytes)
	read -r on_rps on_p50 <<<"$(run)"
	after=$(redirected_bytes)
	plain
	want_redirected "$before" "$after" "round $r"
	rps_ratios+=("$(ratio "$on_rps" "$off_rps")")
	p50_ratios+=("$(ratio "$off_p50" "$on_p50")")
	printf 'round %d: requests/s plain %.0f, sockhop %.0f: %s×; p50 %.0f -> %.0f µs: %s× (%s MB redirected)\n' \
		"$r" "$off_rps" "$on_rps" "${rps_ratios[-1]}" "$off_p50" "$on_p50" "${p50_ratios[-1]}" $(((after - before) / 1000000))
done
median_range "requests/s" "${rps_ratios[@]}"
median_range "p50       " "${p50_ratios[@]}"
