# shellcheck shell=bash disable=SC2034 # settings used by the scripts that source this file
# Shared settings of the e2e cluster scripts. Sourced, never run.
#
# Everything is keyed by the versions below, so changing one builds a new set of
# binaries next to the old ones instead of mixing them.

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.0}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
HELM_VERSION=${HELM_VERSION:-v3.22.0}

# Built binaries live outside the repository: they are ~700 MB.
SOCKHOP_CACHE=${SOCKHOP_CACHE:-/var/cache/sockhop}
BIN_KEY="k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-containerd-${CONTAINERD_VERSION}-helm-${HELM_VERSION}"
BIN_DIR="${SOCKHOP_CACHE}/bin/${BIN_KEY}"
# The throw-away Go module that builds Kubernetes and etcd.
WRAPPER_DIR="${SOCKHOP_CACHE}/src/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"

# Runtime state of a running cluster (pids, certificates, configs, kubeconfig).
SOCKHOP_E2E_STATE=${SOCKHOP_E2E_STATE:-/run/sockhop-e2e}
STATE_DIR=${SOCKHOP_E2E_STATE}
KUBECONFIG_PATH="${STATE_DIR}/kubeconfig"
PID_DIR="${STATE_DIR}/pids"
LOG_DIR="${STATE_DIR}/logs"
CONTAINERD_SOCK="${STATE_DIR}/containerd/containerd.sock"

# The node's network, all inside the cluster's private network namespace.
NODE_NAME=sockhop-e2e
BRIDGE=sockhop0
NODE_IP=10.88.0.1
POD_SUBNET=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
# The sandbox image: built from e2e/image/pause, imported, never pulled.
PAUSE_IMAGE=docker.io/sockhop/pause:e2e

# The cgroup parent given to kubelet as cgroupRoot; created in every hierarchy. The
# cluster's own daemons run in its child "node" (in the cgroup v2 hierarchy), so every
# process the cluster starts, down to containers and shims, can be found again.
CGROUP_ROOT_NAME=${SOCKHOP_E2E_CGROUP_ROOT:-sockhop-e2e}

# The environment of clients run in the namespace (exec.sh, env.sh): the cluster's
# kubeconfig, and kubectl's and helm's caches in the state directory rather than in
# the home directory, so down.sh leaves nothing behind.
CLIENT_ENV=(
	KUBECONFIG="${KUBECONFIG_PATH}"
	KUBECACHEDIR="${STATE_DIR}/client/kube-cache"
	HELM_CACHE_HOME="${STATE_DIR}/client/helm/cache"
	HELM_CONFIG_HOME="${STATE_DIR}/client/helm/config"
	HELM_DATA_HOME="${STATE_DIR}/client/helm/data"
	SOCKHOP_E2E_NODE="${NODE_NAME}"
	SOCKHOP_E2E_STATE="${STATE_DIR}"
	SOCKHOP_E2E_CGROUP_ROOT="${CGROUP_ROOT_NAME}"
	CONTAINERD_ADDRESS="${CONTAINERD_SOCK}"
	CONTAINERD_NAMESPACE=k8s.io
)

# Directories kubelet, containerd and the CNI library use whatever they are told
# (device-plugin socket, shim sockets, CNI result cache). Inside the namespace each is
# a bind mount of a directory under the state directory (ns-setup.sh). One missing on
# the VM is created as an empty mount point holding MOUNT_POINT_MARKER (hidden under
# the bind mount), and removed by down.sh once no namespace mounts it any more.
PRIVATE_DIRS=(/var/lib/kubelet=kubelet /var/lib/cni=cni/cache /run/containerd=containerd/run)
MOUNT_POINT_MARKER=.sockhop-e2e-mount-point

# Debian puts the CNI plugins here.
CNI_BIN_DIR=/usr/lib/cni

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# log prints a progress line with the seconds elapsed since the script started.
log() {
	printf '[%s +%3ds] %s\n' "$(basename "$0" .sh)" "${SECONDS}" "$*" >&2
}

die() {
	log "error: $*"
	exit 1
}

need_root() {
	[[ ${EUID} -eq 0 ]] || die "must run as root"
}

# holder_pid prints the PID of the process holding the cluster's namespaces, if it is
# running and is the one up.sh started (same network namespace as recorded).
holder_pid() {
	local pid netns
	[[ -r "${PID_DIR}/holder" ]] || return 1
	read -r pid netns <"${PID_DIR}/holder" || return 1
	[[ -n ${pid} && $(readlink "/proc/${pid}/ns/net" 2>/dev/null) == "${netns}" ]] || return 1
	echo "${pid}"
}

# ns_exec runs a command inside the cluster's network and mount namespaces, in the
# current directory (nsenter would otherwise start in /), set up for the cluster.
ns_exec() {
	local pid
	pid=$(holder_pid) || die "the e2e cluster is not up (no namespace holder); run e2e/cluster/up.sh"
	env "${CLIENT_ENV[@]}" nsenter --target "${pid}" --net --mount --wd="${PWD}" -- "$@"
}

# alive PID succeeds while PID runs; a zombie waiting to be reaped does not count.
alive() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat%% *} != Z ]]
}

# cgroup_mounts prints the mount point of every cgroup hierarchy (v1 and v2).
cgroup_mounts() {
	awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts | sort -u
}

# cgroup2_mount prints the mount point of the cgroup v2 hierarchy.
cgroup2_mount() {
	awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts
}
