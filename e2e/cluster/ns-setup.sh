#!/usr/bin/env bash
# Run by up.sh inside the cluster's fresh network and mount namespace (via nsenter):
# prepares the mounts, sysctls and network the node needs. Everything done here is
# private to the namespaces and vanishes with them; the only trace on the VM are
# mount-point directories, marked for down.sh to remove.
set -euo pipefail

# shellcheck source=e2e/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# kubelet refuses to start with protectKernelDefaults unless these sysctls hold these
# values. The VM's are not changed: files holding them are bind-mounted over the
# /proc/sys entries inside this mount namespace only.
KUBELET_SYSCTLS=(vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1
	kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000)

# Shared inside the namespace (new peer groups, unrelated to the VM's mounts), so
# kubelet can honour mount propagation for volumes.
make_shared() {
	mount --make-rshared /
}

# mount_logs: container logs (/var/log/pods, /var/log/containers are fixed paths in
# kubelet) stay in the namespace.
mount_logs() {
	mount -t tmpfs -o mode=755,size=1g sockhop-e2e-log /var/log
}

# mount_point DIR creates DIR if missing, marked as created by an e2e cluster.
mount_point() {
	[[ -d $1 ]] && return 0
	mkdir "$1"
	touch "$1/${MOUNT_POINT_MARKER}"
}

mount_private_dirs() {
	local entry dir src
	for entry in "${PRIVATE_DIRS[@]}"; do
		dir=${entry%%=*} src="${STATE_DIR}/${entry#*=}"
		mkdir -p "${src}"
		mount_point "${dir}"
		mount --bind "${src}" "${dir}"
	done
}

mount_sysctls() {
	local kv key file
	mkdir -p "${STATE_DIR}/sysctl"
	for kv in "${KUBELET_SYSCTLS[@]}"; do
		key=${kv%%=*}
		[[ $(cat "/proc/sys/${key}") == "${kv#*=}" ]] && continue
		file="${STATE_DIR}/sysctl/${key//\//.}"
		echo "${kv#*=}" >"${file}"
		mount --bind "${file}" "/proc/sys/${key}"
	done
}

setup_network() {
	# Network sysctls are per network namespace.
	echo 1 >/proc/sys/net/ipv4/ip_forward
	echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
	ip link set lo up
	ip link add "${BRIDGE}" type bridge
	ip addr add "${NODE_IP}/${POD_SUBNET#*/}" dev "${BRIDGE}"
	ip link set "${BRIDGE}" up
	# hostNetwork pods and the daemons reach Service IPs through the bridge, where
	# kube-proxy's rules translate them.
	ip route add "${SERVICE_CIDR}" dev "${BRIDGE}" src "${NODE_IP}"
}

main() {
	[[ $(readlink /proc/self/ns/net) != $(readlink /proc/1/ns/net) ]] ||
		die "refusing to run in the VM's own network namespace"
	make_shared
	mount_logs
	mount_private_dirs
	mount_sysctls
	setup_network
}

main "$@"
