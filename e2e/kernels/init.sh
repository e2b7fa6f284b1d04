#!/bin/busybox sh
# /init of the kernel-matrix guest (see matrix.sh). It mounts what the kernel
# tests need, loads the modules, runs `sockhop doctor` and each test binary,
# writes everything to the result port (/dev/ttyS1, a file on the host) between
# "@@@" markers, and powers off. Nothing here decides pass or fail: the host
# parses the output.
/bin/busybox --install -s /bin
# busybox's shell runs its own applets before PATH: the real ip, modprobe
# (kmod, which reads .ko.xz) and the others are called by their full path.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /root /sys/fs/bpf
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
# A unified cgroup v2 hierarchy, as on a systemd node; no v1 net_cls/net_prio.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
ip link set lo up
ulimit -n 1048576

. /sockhop/matrix.env

out=/dev/ttyS1
stty -F "$out" raw -echo 2>/dev/null
say() { echo "$@" >"$out"; }

say "@@@ kernel $(uname -r)"
# On 6.12, libcrc32c's crc32c comes from crc32c_generic, which nothing
# requests first: without it nf_conntrack (and the nat table) fail to load.
for m in $MATRIX_MODULES; do
	/sbin/modprobe "$m" 2>>/tmp/modprobe.err || echo "modprobe $m failed" >>/tmp/modprobe.err
done
if [ -s /tmp/modprobe.err ]; then
	say "@@@ modules"
	cat /tmp/modprobe.err >"$out"
fi

cd /sockhop/bin
say "@@@ doctor"
./sockhop doctor >"$out" 2>&1
say "@@@ exit doctor $?"

for t in $MATRIX_TESTS; do
	say "@@@ test $t"
	start=$(date +%s)
	# The tests run as root in this guest, so requireRoot never skips and CI
	# is not set: a test skips only for its own reason.
	env $MATRIX_TEST_ENV "./$t.test" -test.v -test.count="$MATRIX_TEST_COUNT" -test.timeout="$MATRIX_TEST_TIMEOUT" \
		${MATRIX_TEST_RUN:+-test.run="$MATRIX_TEST_RUN"} \
		${MATRIX_TEST_BENCH:+-test.bench="$MATRIX_TEST_BENCH"} >"$out" 2>&1
	rc=$?
	say "@@@ exit test $t $rc $(($(date +%s) - start))s"
done

# What the tests left behind, if anything (they must clean up).
say "@@@ leftovers"
{
	for f in /sys/fs/bpf/*; do [ -e "$f" ] && echo "pin:$f"; done
	/usr/sbin/ip netns list | sed 's/^/netns:/'
	for f in /sys/fs/cgroup/sockhop-test-*; do [ -e "$f" ] && echo "cgroup:$f"; done
} >"$out" 2>&1
say "@@@ done"
sync
sleep 1
poweroff -f
