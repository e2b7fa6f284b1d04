#!/usr/bin/env bash
# Stop the e2e cluster started by up.sh and remove everything it created: daemons,
# containers and shims (by PID), the cgroups under the kubelet cgroupRoot in every
# hierarchy, the namespace holder (the namespaces and every mount inside them go with
# it) and the state directory. Safe to run twice, or when nothing is up.
#
# SOCKHOP_E2E_LOGS_DIR=DIR keeps a copy of the daemons' logs in DIR.
set -euo pipefail

# shellcheck source=e2e/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Stopped in two rounds: the API server needs etcd to shut down cleanly (it removes
# itself from the kubernetes Endpoints), and kubelet needs containerd.
DAEMONS_FIRST=(kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver)
DAEMONS_LAST=(containerd etcd)

# daemon_pid NAME prints the recorded PID of a daemon if that process still runs the
# recorded binary (a reused PID is never signalled).
daemon_pid() {
	local pid bin
	[[ -r "${PID_DIR}/$1" ]] || return 1
	read -r pid bin <"${PID_DIR}/$1" || return 1
	[[ -n ${pid} && $(readlink "/proc/${pid}/exe" 2>/dev/null) == "${bin}" ]] || return 1
	echo "${pid}"
}

# stop_daemons NAME... asks the daemons to stop, and kills those that have not within 10 s.
stop_daemons() {
	local name pid
	local -A pids=()
	for name in "$@"; do
		if pid=$(daemon_pid "${name}"); then
			kill -TERM "${pid}" 2>/dev/null || true
			pids[${name}]=${pid}
		fi
	done
	((${#pids[@]} > 0)) || return 0
	log "stopping ${!pids[*]}"
	local deadline=$((SECONDS + 10))
	for name in "${!pids[@]}"; do
		pid=${pids[${name}]}
		while alive "${pid}" && ((SECONDS < deadline)); do sleep 0.1; done
		if alive "${pid}"; then
			log "${name} did not stop within 10s of SIGTERM; killing it"
			kill -KILL "${pid}" 2>/dev/null || true
		fi
	done
}

# cgroup_pids prints the PIDs in the cluster's cgroups of every hierarchy: whatever
# the daemons left running (containerd shims, containers).
cgroup_pids() {
	local mnt
	while read -r mnt; do
		[[ -d "${mnt}/${CGROUP_ROOT_NAME}" ]] || continue
		find "${mnt}/${CGROUP_ROOT_NAME}" -name cgroup.procs -exec cat {} + 2>/dev/null
	done < <(cgroup_mounts) | sort -u
}

# kill_cgroup_processes kills, by PID, every process left in the cluster's cgroups.
kill_cgroup_processes() {
	local pids deadline=$((SECONDS + 20))
	while pids=$(cgroup_pids) && [[ -n ${pids} ]]; do
		((SECONDS < deadline)) || die "processes left in the ${CGROUP_ROOT_NAME} cgroups: ${pids//$'\n'/ }"
		log "killing $(wc -w <<<"${pids}") processes left in the ${CGROUP_ROOT_NAME} cgroups"
		# shellcheck disable=SC2086 # one PID per word
		kill -KILL ${pids} 2>/dev/null || true
		sleep 0.2
	done
}

# remove_cgroups removes the cluster's cgroup directories, deepest first, in every hierarchy.
remove_cgroups() {
	local mnt n=0
	while read -r mnt; do
		[[ -d "${mnt}/${CGROUP_ROOT_NAME}" ]] || continue
		find "${mnt}/${CGROUP_ROOT_NAME}" -depth -type d -exec rmdir {} +
		n=$((n + 1))
	done < <(cgroup_mounts)
	((n == 0)) || log "removed ${CGROUP_ROOT_NAME} cgroups from ${n} hierarchies"
}

# stop_holder ends the namespace holder. The network namespace (bridge, veths,
# iptables rules) and the mount namespace (tmpfs, bind mounts, overlay mounts, pod
# network namespace mounts) are freed with their last process.
stop_holder() {
	local pid others
	pid=$(holder_pid) || return 0
	others=$(find_namespace_users "${pid}")
	if [[ -n ${others} ]]; then
		log "warning: processes not started by up.sh still use the namespaces (e.g. e2e/cluster/exec.sh): ${others//$'\n'/ }"
	fi
	kill -KILL "${pid}"
	while alive "${pid}"; do sleep 0.05; done
	log "namespace holder stopped"
}

# find_namespace_users prints the PIDs other than the holder inside its mount namespace.
find_namespace_users() {
	local holder=$1 mntns p
	mntns=$(readlink "/proc/${holder}/ns/mnt")
	for p in /proc/[0-9]*; do
		[[ ${p#/proc/} != "${holder}" && $(readlink "${p}/ns/mnt" 2>/dev/null) == "${mntns}" ]] && echo "${p#/proc/}"
	done
	return 0
}

# remove_mount_points removes the mount-point directories an e2e cluster created
# on the VM (see PRIVATE_DIRS), once no namespace mounts them any more: another
# cluster (other SOCKHOP_E2E_STATE) may still use them, and removing them would
# detach its mounts. Only a directory holding nothing but the marker is removed.
remove_mount_points() {
	local entry dir
	for entry in "${PRIVATE_DIRS[@]}"; do
		dir=${entry%%=*}
		[[ -f "${dir}/${MOUNT_POINT_MARKER}" ]] || continue
		if grep -qs " ${dir} " /proc/[0-9]*/mountinfo; then
			log "${dir} is still a mount point in another namespace; left in place"
			continue
		fi
		if [[ $(find "${dir}" -mindepth 1 -maxdepth 1 ! -name "${MOUNT_POINT_MARKER}" | head -1) ]]; then
			log "warning: ${dir} is not empty; left in place"
			continue
		fi
		rm -f "${dir}/${MOUNT_POINT_MARKER}"
		rmdir "${dir}"
	done
}

remove_state() {
	[[ -e ${STATE_DIR} ]] || return 0
	if [[ -n ${SOCKHOP_E2E_LOGS_DIR:-} && -d "${LOG_DIR}" ]]; then
		mkdir -p "${SOCKHOP_E2E_LOGS_DIR}"
		cp -a "${LOG_DIR}/." "${SOCKHOP_E2E_LOGS_DIR}/"
		log "logs copied to ${SOCKHOP_E2E_LOGS_DIR}"
	fi
	rm -rf "${STATE_DIR}"
	log "removed ${STATE_DIR}"
}

main() {
	need_root
	stop_daemons "${DAEMONS_FIRST[@]}"
	stop_daemons "${DAEMONS_LAST[@]}"
	kill_cgroup_processes
	remove_cgroups
	stop_holder
	remove_mount_points
	remove_state
	log "down in ${SECONDS}s"
}

main "$@"
