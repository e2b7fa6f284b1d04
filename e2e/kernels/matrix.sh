#!/usr/bin/env bash
# The kernel matrix: boot each kernel of a list under qemu and run
# `sockhop doctor` and the kernel test binaries inside it.
#
# For each kernel: its Debian package is fetched with `apt-get download` into
# the cache (never installed, /boot is not touched), unpacked with dpkg-deb,
# and given an initramfs this script builds (busybox, iproute2, iptables,
# sysctl, setpriv, taskset, kmod, with their libraries, and the modules the
# tests need). The binaries built here from the working tree go into a second
# initramfs segment, with init.sh as /init. The guest writes its results to a
# second serial port (a file here); summary.awk reads it.
#
# Environment (all optional):
#   SOCKHOP_KERNELS          kernels to boot, space-separated, each
#                            PACKAGE[@SECONDS][=EXPECT]: a Debian package name
#                            that may hold shell globs (the newest match in the
#                            apt cache wins); @SECONDS, that kernel's timeout;
#                            =EXPECT, the verdict it must get: "ok", or
#                            "unsupported:WORD,WORD..." (doctor fails and names
#                            every WORD, no test fails, TestUnsupportedKernel
#                            passes). Without =EXPECT, ok and unsupported both
#                            pass. Default: the newest 6.1 LTS cloud kernel,
#                            unsupported for want of bpf_link for sk_msg
#                            (6.10), the sock_recv_length tracepoint (6.3),
#                            sk_psock.msg_tot_len and bpf_cast_to_kern_ctx
#                            (6.2); the newest 6.12 one, ok.
#   SOCKHOP_KERNEL_TIMEOUT   seconds a guest may run (default 1800)
#   SOCKHOP_KERNEL_PKGS      Go packages whose tests run in the guest
#                            (default: ./pkg/datapath ./cmd/sockhop)
#   SOCKHOP_KERNEL_TEST_RUN  -test.run for every test binary (default: all)
#   SOCKHOP_KERNEL_TEST_BENCH  -test.bench for every test binary (default:
#                            none; with SOCKHOP_KERNEL_TEST_RUN='^$' for
#                            benchmarks alone)
#   SOCKHOP_KERNEL_TEST_TIMEOUT  -test.timeout per binary (default 40m)
#   SOCKHOP_KERNEL_TEST_COUNT    -test.count (default 1; more to hunt flakes)
#   SOCKHOP_KERNEL_TEST_ENV  extra VAR=value words for the tests in the guest
#                            (SOCKHOP_TEST_MIB is passed on when set)
#   SOCKHOP_TEST_PATIENCE    factor for the tests' waits (default 4 under TCG)
#   SOCKHOP_KERNEL_CACHE     package cache (default /var/cache/sockhop/kernels)
#   SOCKHOP_KERNEL_OUT       logs of this run (default _output/kernels)
#   SOCKHOP_KERNEL_ACCEL     auto (KVM where the CPU has vmx/svm), kvm or tcg
#   SOCKHOP_KERNEL_MEM       guest memory in MiB (default 8192: TestScale's
#                            10 000 connections were OOM-killed in 2 and 4 GiB)
#   SOCKHOP_KERNEL_SMP       guest CPUs (default 2)
#   SOCKHOP_KERNEL_TCG_THREAD  single (default) or multi: multi-threaded TCG
#                            runs the guest's CPUs on host threads in parallel,
#                            but a static key flipped by a sockops attach has
#                            crashed 6.12 there ("Oops: int3" in tcp_connect)
#   SOCKHOP_KERNEL_VERBOSE   1: stream the guest's whole test output (default:
#                            one line per test result)
#   SOCKHOP_QEMU_LOCK        lock file: one guest at a time on this machine
#                            (default /tmp/sockhop-qemu.lock)
#
# Exit code: 0 when every kernel got its expected verdict (ok, or unsupported
# with doctor naming what is missing), 1 otherwise: a test that failed, a
# guest that did not finish, a kernel that turned unsupported or supported.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
GO=${GO:-go}

kernels=${SOCKHOP_KERNELS:-"linux-image-6.1.0-*-cloud-amd64=unsupported:bpf_link,sock_recv_length,sk_data_ready,msg_tot_len,bpf_cast_to_kern_ctx linux-image-6.12.*+deb12-cloud-amd64=ok"}
timeout_default=${SOCKHOP_KERNEL_TIMEOUT:-1800}
pkgs=${SOCKHOP_KERNEL_PKGS:-"./pkg/datapath ./cmd/sockhop"}
test_timeout=${SOCKHOP_KERNEL_TEST_TIMEOUT:-40m}
test_env=${SOCKHOP_KERNEL_TEST_ENV:-}
[ -n "${SOCKHOP_TEST_MIB:-}" ] && test_env="SOCKHOP_TEST_MIB=$SOCKHOP_TEST_MIB $test_env"
cache=${SOCKHOP_KERNEL_CACHE:-/var/cache/sockhop/kernels}
out=${SOCKHOP_KERNEL_OUT:-$repo/_output/kernels}
accel=${SOCKHOP_KERNEL_ACCEL:-auto}
mem=${SOCKHOP_KERNEL_MEM:-8192}
smp=${SOCKHOP_KERNEL_SMP:-2}
lock=${SOCKHOP_QEMU_LOCK:-/tmp/sockhop-qemu.lock}
tcg_thread=${SOCKHOP_KERNEL_TCG_THREAD:-single}

# /dev/kvm alone is not enough: on a VM without vmx/svm it is a software
# hypervisor that cannot run this guest.
kvm_usable() { grep -Eqw 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]; }
# Under TCG the guest is several times slower: the tests' waits for what
# must happen (a peer getting ready, bytes moving) scale by
# SOCKHOP_TEST_PATIENCE (testbed.Patience), 4 unless set.
patience=${SOCKHOP_TEST_PATIENCE:-}
if [ -z "$patience" ] && { [ "$accel" = tcg ] || { [ "$accel" = auto ] && ! kvm_usable; }; }; then
	patience=4
fi
[ -n "$patience" ] && test_env="SOCKHOP_TEST_PATIENCE=$patience $test_env"

# Modules the tests use (veth pairs, iptables REDIRECT with the owner match,
# ss's socket diagnostics, kTLS and its AES-GCM for the hazard checks), with what they need.
# crc32c_generic comes before nf_conntrack: on 6.12 libcrc32c needs it loaded
# first or the nat table is missing. A module built into a kernel is skipped.
modules=(crc32c_generic libcrc32c veth nf_conntrack nf_nat nf_tables nft_compat nft_chain_nat
	x_tables ip_tables ip6_tables iptable_nat ip6table_nat iptable_filter ip6table_filter
	xt_REDIRECT xt_owner xt_tcpudp xt_nat xt_conntrack xt_mark xt_multiport xt_comment
	inet_diag tcp_diag udp_diag tls gcm ghash_generic)
# Dynamically linked tools, copied with their libraries (ldd).
tools=(ip ss iptables ip6tables sysctl setpriv taskset kmod)

log() { echo "matrix: $*" >&2; }
die() { log "$*"; exit 2; }

for spec in $kernels; do
	case $spec in *=*)
		[[ ${spec#*=} =~ ^(ok|unsupported(:[^:]+)?)$ ]] ||
			die "$spec: the expected verdict is ok or unsupported[:WORD,...]"
		;;
	esac
done
[ "$(id -u)" -eq 0 ] || die "needs root (apt-get download into $cache; the tests run as root in the guest)"
"$repo/hack/deps.sh" qemu-system-x86 busybox-static cpio kmod xz-utils iproute2 iptables util-linux

# --- build the binaries once, from the working tree -------------------------
work=$(mktemp -d /tmp/sockhop-matrix.XXXXXX)
qpid=""
# The guest runs in the background (for the progress lines), where SIGINT
# does not reach it: stop it ourselves, through timeout, which passes the
# signal to qemu.
stop_guest() {
	[ -n "$qpid" ] || return 0
	[ -s "$work/started" ] && kill -TERM "$(cut -d' ' -f2 "$work/started")" 2>/dev/null
	kill -TERM "$qpid" 2>/dev/null
	wait "$qpid" 2>/dev/null
}
trap 'stop_guest; exit 130' INT TERM
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$cache"
payload=$work/payload
mkdir -p "$payload/sockhop/bin"
t0=$SECONDS
log "building sockhop and the test binaries ($pkgs)"
(cd "$repo" && CGO_ENABLED=0 $GO build -o "$payload/sockhop/bin/sockhop" ./cmd/sockhop)
tests=""
for p in $pkgs; do
	name=${p#./}
	mkdir -p "$payload/sockhop/bin/$(dirname "$name")"
	(cd "$repo" && CGO_ENABLED=0 $GO test -c -o "$payload/sockhop/bin/$name.test" "$p")
	tests="$tests $name"
done
install -m 0755 "$here/init.sh" "$payload/init"
cat >"$payload/sockhop/matrix.env" <<EOF
MATRIX_MODULES="${modules[*]}"
MATRIX_TESTS="${tests# }"
MATRIX_TEST_TIMEOUT="$test_timeout"
MATRIX_TEST_COUNT="${SOCKHOP_KERNEL_TEST_COUNT:-1}"
MATRIX_TEST_RUN="${SOCKHOP_KERNEL_TEST_RUN:-}"
MATRIX_TEST_BENCH="${SOCKHOP_KERNEL_TEST_BENCH:-}"
MATRIX_TEST_ENV="$test_env"
EOF
(cd "$payload" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) >"$work/payload.cpio"
log "built in $((SECONDS - t0))s"

# --- per kernel: package, unpacked tree, base initramfs (all cached) --------

# resolve PATTERN: the newest linux-image package in the apt cache matching it.
resolve() {
	local pat=$1 names
	names=$(apt-cache pkgnames linux-image- 2>/dev/null || true)
	if [ -z "$names" ]; then
		apt-get update -q >/dev/null
		names=$(apt-cache pkgnames linux-image-)
	fi
	local n best=""
	# shellcheck disable=SC2053 # $pat is a glob on purpose
	best=$(for n in $names; do
		[[ $n == $pat && $n != *-unsigned && $n != *-dbg ]] && echo "$n"
	done | sort -V | tail -n1)
	[ -n "$best" ] || return 1
	echo "$best"
}

# fetch PKG: download and unpack it into $cache/PKG (once); prints the dir.
fetch() {
	local pkg=$1 dir=$cache/$1
	if [ ! -e "$dir/.unpacked" ]; then
		rm -rf "$dir"
		mkdir -p "$dir"
		local dl
		dl=$(mktemp -d "$cache/.download.XXXXXX")
		# apt drops privileges to _apt for the download when it may.
		id _apt >/dev/null 2>&1 && chown _apt "$dl"
		(cd "$dl" && apt-get download -q "$pkg" >&2)
		mv "$dl"/*.deb "$dir/"
		rmdir "$dl"
		dpkg-deb -x "$dir"/*.deb "$dir/root"
		local kver
		kver=$(basename "$(ls "$dir"/root/boot/vmlinuz-*)")
		kver=${kver#vmlinuz-}
		# Debian generates modules.dep at install time; do it for the tree here.
		depmod -b "$dir/root" "$kver"
		echo "$kver" >"$dir/kver"
		touch "$dir/.unpacked"
	fi
	echo "$dir"
}

# copy_bin STAGE FILE: FILE and the libraries it links, at their own paths.
copy_bin() {
	local stage=$1 f=$2 lib
	mkdir -p "$stage$(dirname "$f")"
	cp -L "$f" "$stage$f"
	for lib in $(ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^\t\//{print $1}'); do
		[ -e "$stage$lib" ] && continue
		mkdir -p "$stage$(dirname "$lib")"
		cp -L "$lib" "$stage$lib"
	done
}

# base_initramfs DIR: busybox, the tools, the modules; rebuilt when what
# makes it changes. Prints the cpio.gz path.
base_initramfs() {
	local dir=$1 kver stamp
	kver=$(cat "$dir/kver")
	stamp=$({ declare -f base_initramfs copy_bin; echo "${modules[*]} ${tools[*]}"; } | sha256sum | cut -c1-16)
	local img=$dir/base-$stamp.cpio.gz
	if [ ! -e "$img" ]; then
		rm -f "$dir"/base-*.cpio.gz
		local stage=$work/base-$kver
		rm -rf "$stage"
		mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root}
		cp /bin/busybox "$stage/bin/busybox"
		local t f
		for t in "${tools[@]}"; do
			f=$(command -v "$t") || die "$t not found on this machine"
			f=$(readlink -f "$f")
			copy_bin "$stage" "$f"
			# Also at /usr/sbin/NAME, ahead of busybox's applets in PATH.
			[ "$f" = "/usr/sbin/$t" ] || ln -sf "$f" "$stage/usr/sbin/$t"
		done
		for t in modprobe insmod rmmod lsmod modinfo depmod; do ln -sf /usr/bin/kmod "$stage/sbin/$t"; done
		# iptables finds its matches and targets by dlopen, not by ldd.
		local xt=/usr/lib/x86_64-linux-gnu/xtables
		if [ -d "$xt" ]; then
			mkdir -p "$stage$xt"
			for f in "$xt"/*.so; do copy_bin "$stage" "$f"; done
		fi
		printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$stage/etc/passwd"
		printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"
		cp /etc/protocols /etc/services "$stage/etc/" 2>/dev/null || true
		# The modules and their dependencies, as modprobe resolves them in
		# the unpacked tree.
		local m line mods=()
		for m in "${modules[@]}"; do
			while read -r line; do
				case $line in insmod\ *) mods+=("${line#insmod }") ;; esac
			done < <(modprobe -d "$dir/root" -S "$kver" --show-depends "$m" 2>/dev/null || true)
		done
		local src=$dir/root/lib/modules/$kver
		[ -d "$src" ] || src=$dir/root/usr/lib/modules/$kver
		mkdir -p "$stage/lib/modules/$kver"
		cp "$src"/modules.builtin* "$src"/modules.order "$stage/lib/modules/$kver/" 2>/dev/null || true
		for f in $(printf '%s\n' "${mods[@]}" | sort -u); do
			local rel=${f#"$src"/}
			mkdir -p "$stage/lib/modules/$kver/$(dirname "$rel")"
			cp "$f" "$stage/lib/modules/$kver/$rel"
		done
		depmod -b "$stage" "$kver"
		(cd "$stage" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -1 >"$img.tmp"
		# The uncompressed segment appended after this one must start at a
		# multiple of 4 bytes; the kernel skips the zeros between segments.
		truncate -s "$((($(stat -c %s "$img.tmp") + 3) / 4 * 4))" "$img.tmp"
		mv "$img.tmp" "$img"
		rm -rf "$stage"
	fi
	echo "$img"
}

accel_args() {
	case $accel in
	kvm) echo "-accel kvm -cpu host" ;;
	tcg) echo "-accel tcg,thread=$tcg_thread -cpu max" ;;
	auto)
		if kvm_usable; then
			echo "-accel kvm -cpu host"
		else
			echo "-accel tcg,thread=$tcg_thread -cpu max"
		fi
		;;
	*) die "SOCKHOP_KERNEL_ACCEL=$accel: want auto, kvm or tcg" ;;
	esac
}

# check_expect EXPECT VERDICT REASON REPORT: prints why the outcome is not the
# expected one (nothing when it is).
check_expect() {
	local expect=$1 verdict=$2 reason=$3 report=$4 w
	case $verdict in failed | incomplete)
		echo "$verdict${expect:+ (expected ${expect%%:*})}"
		return
		;;
	esac
	[ -z "$expect" ] && return
	if [ "$verdict" != "${expect%%:*}" ]; then
		echo "$verdict, expected ${expect%%:*}"
		return
	fi
	if [ "$verdict" = ok ]; then
		[ "$passed" -gt 0 ] || echo "no test passed"
		return
	fi
	local words=${expect#unsupported} missing=()
	words=${words#:}
	for w in ${words//,/ }; do
		[[ $reason == *"$w"* ]] || missing+=("$w")
	done
	[ ${#missing[@]} -eq 0 ] || echo "doctor does not name ${missing[*]}"
	# What sockhop does on a kernel it cannot run on was tested there.
	if [[ " $pkgs " == *" ./pkg/datapath "* ]] && [ -z "${SOCKHOP_KERNEL_TEST_RUN:-}" ] &&
		! grep -qx '@@ pass pkg/datapath TestUnsupportedKernel' <<<"$report"; then
		echo "TestUnsupportedKernel did not pass"
	fi
}

# --- run ----------------------------------------------------------------------
P=0 F=0 S=0
table=()
rc=0
total0=$SECONDS
for spec in $kernels; do
	expect=
	case $spec in *=*) expect=${spec#*=} spec=${spec%%=*} ;; esac
	pat=${spec%@*}
	ktimeout=$timeout_default
	[ "$pat" != "$spec" ] && ktimeout=${spec##*@}
	k0=$SECONDS
	if ! pkg=$(resolve "$pat"); then
		log "no package matches $pat"
		table+=("$(printf '%-30s %-11s no such package' "$pat" "failed")")
		rc=1
		continue
	fi
	dir=$(fetch "$pkg")
	kver=$(cat "$dir/kver")
	base=$(base_initramfs "$dir")
	kout=$out/$kver
	rm -rf "$kout"
	mkdir -p "$kout"
	cat "$base" "$work/payload.cpio" >"$work/initrd"
	prep=$((SECONDS - k0))
	read -r -a acc <<<"$(accel_args)"
	log "$pkg: booting $kver (${acc[*]}, timeout ${ktimeout}s; prepared in ${prep}s); logs in $kout"
	qrc=0
	rm -f "$work/started"
	: >"$kout/results.log"
	# One guest at a time on this machine; the timeout starts once we hold
	# the lock, and so does the guest's time.
	# "started" holds when that was and the pid of timeout (the sh execs it).
	flock "$lock" sh -c 'echo "$(date +%s) $$" >"$1"; shift; exec "$@"' sh "$work/started" \
		timeout -k 10 "$ktimeout" qemu-system-x86_64 "${acc[@]}" -m "$mem" -smp "$smp" \
		-kernel "$dir"/root/boot/vmlinuz-"$kver" -initrd "$work/initrd" \
		-append "console=ttyS0 panic=-1 quiet" \
		-nographic -no-reboot -nic none -monitor none \
		-serial "file:$kout/console.log" -serial "file:$kout/results.log" </dev/null &
	qpid=$!
	# Progress while it runs: each test's result (everything with VERBOSE=1).
	filter='^(@@@|--- )'
	[ "${SOCKHOP_KERNEL_VERBOSE:-0}" = 1 ] && filter=.
	tail -n +1 -F --pid="$qpid" "$kout/results.log" 2>/dev/null | sed -u 's/\r$//' |
		grep --line-buffered -E "$filter" | sed -u "s/^/  [$kver] /" >&2 &
	tpid=$!
	wait "$qpid" || qrc=$?
	wait "$tpid" || true
	qpid=""
	guest=$(($(date +%s) - $(cut -d' ' -f1 "$work/started" 2>/dev/null || date +%s)))
	[ $qrc -eq 124 ] && log "$pkg: timed out after ${ktimeout}s"
	echo "== $pkg ($kver), ${acc[1]}: ${guest}s in the guest, ${prep}s to prepare"
	report=$(awk -f "$here/summary.awk" "$kout/results.log")
	echo "$report" | grep -v '^@@ '
	echo "$report" | tee "$kout/summary.txt" >/dev/null
	# What the guest's kernel complained about (OOM kills, oopses, warnings).
	if grep -aqE 'Out of memory|Oops|BUG:|WARNING:|Kernel panic' "$kout/console.log"; then
		echo "  the guest's kernel said (console.log):"
		grep -aE 'Out of memory|Oops|BUG:|WARNING:|Kernel panic' "$kout/console.log" | head -n 5 | cut -c1-200 | sed -E 's/^.*(\[ *[0-9]+\.[0-9]+\])/    \1/'
	fi
	verdict=incomplete passed=0 failed=0 skipped=0
	eval "$(echo "$report" | sed -n 's/^@@ verdict=/verdict=/p')"
	reason=$(echo "$report" | sed -n 's/^@@ reason //p')
	wall=$((SECONDS - k0))
	P=$((P + passed)) F=$((F + failed)) S=$((S + skipped))
	[ "$verdict" = incomplete ] && tail -n 30 "$kout/console.log" | sed 's/^/  console: /'
	# Is this what the kernel must get?
	why=$(check_expect "$expect" "$verdict" "$reason" "$report")
	mark="as expected"
	[ -z "$expect" ] && mark="(no expectation)"
	if [ -n "$why" ]; then
		rc=1
		mark="UNEXPECTED"
		log "$pkg: UNEXPECTED: $why"
	fi
	line=$(printf '%-30s %-11s %-19s %4ds (guest %ds)  passed %d, failed %d, skipped %d' \
		"$kver" "$verdict" "$mark" "$wall" "$guest" "$passed" "$failed" "$skipped")
	[ -n "$why" ] && line="$line; $why"
	[ -n "$reason" ] && line="$line; doctor: $reason"
	table+=("$line")
done

echo
echo "== kernel matrix: $((SECONDS - total0))s for the kernels, ${SECONDS}s in all"
printf '%s\n' "${table[@]}"
echo "total: passed $P, failed $F, skipped $S"
if [ $rc -ne 0 ]; then
	echo "KERNEL MATRIX FAILED: a kernel did not get its expected verdict (see above)"
fi
exit $rc
