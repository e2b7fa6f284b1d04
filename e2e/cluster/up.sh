#!/usr/bin/env bash
# Start a single-node Kubernetes cluster for the e2e tests.
#
# The whole cluster lives in a private network + mount namespace held by a long-lived
# `sleep` (the "holder"): nothing is added to the VM's own network, iptables or mount
# table. Enter it with e2e/cluster/exec.sh (or `source e2e/cluster/env.sh` and
# `e2e_exec`). State, logs and the kubeconfig are under ${SOCKHOP_E2E_STATE:-/run/sockhop-e2e}.
# Stop it with e2e/cluster/down.sh. Build the binaries first with e2e/cluster/build.sh.
set -euo pipefail

# shellcheck source=e2e/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKI="${STATE_DIR}/pki"
CONF="${STATE_DIR}/conf"
DAEMON_PATH="${BIN_DIR}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

check_prerequisites() {
	need_root
	local bin
	for bin in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl \
		containerd containerd-shim-runc-v2 ctr; do
		[[ -x "${BIN_DIR}/${bin}" ]] || die "${BIN_DIR}/${bin} missing: run e2e/cluster/build.sh first"
	done
	for bin in runc unshare nsenter ip iptables openssl "${CNI_BIN_DIR}/bridge" "${CNI_BIN_DIR}/host-local" \
		"${CNI_BIN_DIR}/loopback"; do
		command -v "${bin}" >/dev/null || die "${bin} missing: run e2e/cluster/build.sh first"
	done
	[[ -n $(cgroup2_mount) ]] || die "no cgroup v2 hierarchy mounted"
	if holder_pid >/dev/null; then
		die "the e2e cluster is already up (state in ${STATE_DIR}); run e2e/cluster/down.sh first"
	fi
}

# prepare_state clears what a crashed earlier run left and creates the state tree.
prepare_state() {
	if [[ -e ${STATE_DIR} ]]; then
		log "cleaning up the remains of an earlier run"
		"${REPO_ROOT}/e2e/cluster/down.sh"
	fi
	mkdir -p "${STATE_DIR}" "${PID_DIR}" "${LOG_DIR}" "${PKI}" "${CONF}" "${STATE_DIR}/images" \
		"${STATE_DIR}/cni/net.d" "${STATE_DIR}/containerd"
	chmod 700 "${STATE_DIR}"
}

# build_images builds the static pause binary and packs it into the sandbox image.
build_images() {
	log "build pause image"
	(cd "${REPO_ROOT}" && CGO_ENABLED=0 go build -o "${STATE_DIR}/tools/" ./e2e/image/pause ./e2e/image/cmd/ociimage)
	"${STATE_DIR}/tools/ociimage" --name "${PAUSE_IMAGE}" --file "/pause=${STATE_DIR}/tools/pause" \
		--entrypoint /pause -o "${STATE_DIR}/images/pause.tar"
}

# new_cert NAME SUBJECT EXT_KEY_USAGE [SANS] signs a P-256 certificate with the cluster CA.
new_cert() {
	local name=$1 subject=$2 usage=$3 sans=${4:-}
	local -a ext=(-addext "basicConstraints=critical,CA:FALSE"
		-addext "keyUsage=critical,digitalSignature,keyEncipherment"
		-addext "extendedKeyUsage=${usage}")
	[[ -n ${sans} ]] && ext+=(-addext "subjectAltName=${sans}")
	openssl req -x509 -new -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" -days 30 -subj "${subject}" \
		-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "${PKI}/${name}.key" -out "${PKI}/${name}.crt" "${ext[@]}" 2>/dev/null
}

make_pki() {
	log "make certificates"
	openssl req -x509 -new -days 30 -subj "/CN=sockhop-e2e-ca" \
		-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "${PKI}/ca.key" -out "${PKI}/ca.crt" 2>/dev/null
	new_cert apiserver "/CN=kube-apiserver" serverAuth \
		"IP:${NODE_IP},IP:127.0.0.1,IP:${API_SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	new_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
	new_cert admin "/O=system:masters/CN=sockhop-e2e-admin" clientAuth
	new_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
	new_cert scheduler "/CN=system:kube-scheduler" clientAuth
	new_cert kube-proxy "/CN=system:kube-proxy" clientAuth
	new_cert kubelet-client "/O=system:nodes/CN=system:node:${NODE_NAME}" clientAuth
	new_cert kubelet "/CN=${NODE_NAME}" serverAuth "IP:${NODE_IP},DNS:${NODE_NAME}"
	# Service-account tokens are signed with this key.
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "${PKI}/sa.key" 2>/dev/null
	openssl pkey -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub" 2>/dev/null
	chmod 600 "${PKI}"/*.key
}

# write_kubeconfig FILE CERT_NAME writes a kubeconfig authenticating with PKI/CERT_NAME.*.
write_kubeconfig() {
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sockhop-e2e
  cluster:
    server: https://${NODE_IP}:6443
    certificate-authority: ${PKI}/ca.crt
users:
- name: $2
  user:
    client-certificate: ${PKI}/$2.crt
    client-key: ${PKI}/$2.key
contexts:
- name: sockhop-e2e
  context:
    cluster: sockhop-e2e
    user: $2
current-context: sockhop-e2e
EOF
}

write_kubeconfigs() {
	write_kubeconfig "${KUBECONFIG_PATH}" admin
	local name
	for name in controller-manager scheduler kube-proxy kubelet-client; do
		write_kubeconfig "${CONF}/${name}.kubeconfig" "${name}"
	done
}

write_containerd_config() {
	cat >"${CONF}/containerd.toml" <<EOF
version = 3
root = "${STATE_DIR}/containerd/root"
state = "${STATE_DIR}/containerd/state"
# The NRI socket and /opt/containerd would be created outside the state directory.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt"]

[grpc]
  address = "${CONTAINERD_SOCK}"

[plugins.'io.containerd.cri.v1.runtime']
  # The VM's processes lack CAP_SYS_RESOURCE: runc cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  # Pod network namespaces under the state directory, not in the VM's /run/netns.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "${STATE_DIR}/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["${CNI_BIN_DIR}"]
    conf_dir = "${STATE_DIR}/cni/net.d"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    # There is no registry: the sandbox image is imported before kubelet starts.
    sandbox = "${PAUSE_IMAGE}"
EOF
}

write_cni_config() {
	cat >"${STATE_DIR}/cni/net.d/10-sockhop-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "sockhop-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE}",
      "isGateway": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${STATE_DIR}/cni/ipam",
        "ranges": [[{"subnet": "${POD_SUBNET}", "gateway": "${NODE_IP}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
}

write_kubelet_config() {
	cat >"${CONF}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
cgroupDriver: cgroupfs
cgroupRoot: /${CGROUP_ROOT_NAME}
# This VM mounts the cgroup v1 controllers (hybrid mode); kubelet 1.35+ refuses v1
# unless told.
failCgroupV1: false
# Check the sysctls kubelet wants instead of changing them (see up.sh).
protectKernelDefaults: true
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${PKI}/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: ${PKI}/kubelet.crt
tlsPrivateKeyFile: ${PKI}/kubelet.key
address: ${NODE_IP}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
podLogsDir: /var/log/pods
volumePluginDir: ${STATE_DIR}/kubelet-volume-plugins
resolvConf: /etc/resolv.conf
# Imported images cannot be pulled again: never collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
serializeImagePulls: false
EOF
}

write_kube_proxy_config() {
	cat >"${CONF}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: ${CONF}/kube-proxy.kubeconfig
hostnameOverride: ${NODE_NAME}
mode: iptables
clusterCIDR: ${POD_SUBNET}
bindAddress: ${NODE_IP}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# Leave the conntrack table size and timeouts (VM-wide settings) alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# create_cgroups creates the kubelet cgroupRoot in every hierarchy and the "node"
# cgroup the daemons run in.
create_cgroups() {
	local mnt dir
	while read -r mnt; do
		dir="${mnt}/${CGROUP_ROOT_NAME}"
		mkdir -p "${dir}"
		# A new cpuset cgroup starts with no CPUs and no memory nodes.
		if [[ -f "${mnt}/cpuset.cpus" && -f "${dir}/cpuset.cpus" ]]; then
			cat "${mnt}/cpuset.cpus" >"${dir}/cpuset.cpus"
			cat "${mnt}/cpuset.mems" >"${dir}/cpuset.mems"
		fi
	done < <(cgroup_mounts)
	mkdir -p "$(cgroup2_mount)/${CGROUP_ROOT_NAME}/node"
}

# start_holder starts the process that owns the cluster's network and mount namespaces.
# --propagation private: nothing mounted inside is seen outside.
start_holder() {
	log "create network and mount namespace"
	# shellcheck disable=SC2016 # expanded by the inner sh
	setsid unshare --net --mount --propagation private -- \
		sh -c 'cd / && echo $$ >"$1" && exec sleep infinity' holder "${PID_DIR}/holder.tmp" \
		</dev/null >/dev/null 2>&1 &
	local i pid
	for ((i = 0; i < 100; i++)); do
		[[ -s "${PID_DIR}/holder.tmp" ]] && break
		sleep 0.05
	done
	pid=$(cat "${PID_DIR}/holder.tmp")
	# The pid file is written before exec: wait until the holder is sleep in its own netns.
	for ((i = 0; i < 100; i++)); do
		[[ $(readlink "/proc/${pid}/exe") == */sleep && $(readlink "/proc/${pid}/ns/net") != $(readlink /proc/self/ns/net) ]] && break
		sleep 0.05
	done
	echo "${pid} $(readlink "/proc/${pid}/ns/net")" >"${PID_DIR}/holder"
	rm -f "${PID_DIR}/holder.tmp"
	holder_pid >/dev/null || die "namespace holder did not start"
}

# setup_namespace prepares mounts, sysctls and the network inside the namespace.
setup_namespace() {
	log "set up mounts, sysctls and network in the namespace"
	ns_exec "${REPO_ROOT}/e2e/cluster/ns-setup.sh"
}

# start_daemon NAME BINARY ARGS... starts a daemon inside the namespace, in its own
# session, in the node cgroup, logging to LOG_DIR/NAME.log; its PID goes to PID_DIR.
start_daemon() {
	local name=$1 bin=$2 pid
	shift 2
	local procs
	procs="$(cgroup2_mount)/${CGROUP_ROOT_NAME}/node/cgroup.procs"
	# In a script without job control a background job is not a process-group leader,
	# so setsid does not fork, and nsenter and sh exec: $! is the daemon itself.
	# shellcheck disable=SC2016 # expanded by the inner sh
	setsid nsenter --target "$(holder_pid)" --net --mount --wd=/ -- \
		env -i PATH="${DAEMON_PATH}" HOME=/root \
		sh -c 'echo $$ >"$1"; shift; exec "$@"' "${name}" "${procs}" "${bin}" "$@" \
		</dev/null >>"${LOG_DIR}/${name}.log" 2>&1 &
	pid=$!
	echo "${pid} ${bin}" >"${PID_DIR}/${name}"
	log "started ${name} (pid ${pid})"
}

start_etcd() {
	start_daemon etcd "${BIN_DIR}/etcd" \
		--name "${NODE_NAME}" --data-dir "${STATE_DIR}/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster "${NODE_NAME}=http://127.0.0.1:2380" \
		--unsafe-no-fsync --log-level warn
}

start_apiserver() {
	start_daemon kube-apiserver "${BIN_DIR}/kube-apiserver" \
		--etcd-servers http://127.0.0.1:2379 \
		--advertise-address "${NODE_IP}" --bind-address 0.0.0.0 --secure-port 6443 \
		--tls-cert-file "${PKI}/apiserver.crt" --tls-private-key-file "${PKI}/apiserver.key" \
		--client-ca-file "${PKI}/ca.crt" \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "${PKI}/sa.pub" --service-account-signing-key-file "${PKI}/sa.key" \
		--service-cluster-ip-range "${SERVICE_CIDR}" \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--allow-privileged=true \
		--kubelet-client-certificate "${PKI}/apiserver-kubelet-client.crt" \
		--kubelet-client-key "${PKI}/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types InternalIP \
		--profiling=false
}

start_containerd() {
	start_daemon containerd "${BIN_DIR}/containerd" --config "${CONF}/containerd.toml"
}

start_controller_manager() {
	local kc="${CONF}/controller-manager.kubeconfig"
	start_daemon kube-controller-manager "${BIN_DIR}/kube-controller-manager" \
		--kubeconfig "${kc}" --authentication-kubeconfig "${kc}" --authorization-kubeconfig "${kc}" \
		--bind-address 127.0.0.1 --leader-elect=false \
		--use-service-account-credentials=true \
		--service-account-private-key-file "${PKI}/sa.key" --root-ca-file "${PKI}/ca.crt" \
		--flex-volume-plugin-dir "${STATE_DIR}/kcm-volume-plugins" \
		--profiling=false
}

start_scheduler() {
	local kc="${CONF}/scheduler.kubeconfig"
	start_daemon kube-scheduler "${BIN_DIR}/kube-scheduler" \
		--kubeconfig "${kc}" --authentication-kubeconfig "${kc}" --authorization-kubeconfig "${kc}" \
		--bind-address 127.0.0.1 --leader-elect=false --profiling=false
}

start_kubelet() {
	start_daemon kubelet "${BIN_DIR}/kubelet" \
		--config "${CONF}/kubelet.yaml" --kubeconfig "${CONF}/kubelet-client.kubeconfig" \
		--hostname-override "${NODE_NAME}" --node-ip "${NODE_IP}"
}

start_kube_proxy() {
	start_daemon kube-proxy "${BIN_DIR}/kube-proxy" --config "${CONF}/kube-proxy.yaml"
}

# wait_for WHAT TIMEOUT_S COMMAND... polls COMMAND until it succeeds.
wait_for() {
	local what=$1 timeout=$2 deadline
	shift 2
	deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			die "timed out after ${timeout}s waiting for ${what}"
		fi
		sleep 0.2
	done
	log "${what}: ready"
}

kubectl_ns() {
	ns_exec "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" "$@"
}

node_ready() {
	[[ $(kubectl_ns get node "${NODE_NAME}" \
		-o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

import_pause_image() {
	ns_exec "${BIN_DIR}/ctr" --address "${CONTAINERD_SOCK}" -n k8s.io images import \
		"${STATE_DIR}/images/pause.tar" >>"${LOG_DIR}/ctr.log" 2>&1
	log "imported ${PAUSE_IMAGE}"
}

# on_exit, after a failure, shows the daemons' last words and tears the half-started
# cluster down (set SOCKHOP_E2E_KEEP_ON_FAILURE=1 to keep it for inspection).
on_exit() {
	local rc=$? f
	((rc != 0)) || return 0
	for f in "${LOG_DIR}"/*.log; do
		[[ -s ${f} ]] || continue
		echo "----- last lines of ${f}" >&2
		tail -n 15 "${f}" >&2
	done
	if [[ ${SOCKHOP_E2E_KEEP_ON_FAILURE:-} == 1 ]]; then
		log "failed; cluster kept for inspection (SOCKHOP_E2E_KEEP_ON_FAILURE=1)"
	else
		log "failed; tearing down"
		"${REPO_ROOT}/e2e/cluster/down.sh" || true
	fi
}

main() {
	check_prerequisites
	prepare_state
	trap on_exit EXIT
	build_images
	make_pki
	write_kubeconfigs
	write_containerd_config
	write_cni_config
	write_kubelet_config
	write_kube_proxy_config
	create_cgroups
	start_holder
	setup_namespace

	start_etcd
	start_containerd
	start_apiserver
	wait_for "containerd" 30 ns_exec "${BIN_DIR}/ctr" --address "${CONTAINERD_SOCK}" version
	import_pause_image
	wait_for "kube-apiserver" 120 kubectl_ns get --raw /readyz
	start_controller_manager
	start_scheduler
	start_kubelet
	start_kube_proxy
	wait_for "node ${NODE_NAME} Ready" 120 node_ready
	wait_for "default ServiceAccount" 60 kubectl_ns -n default get serviceaccount default
	trap - EXIT
	log "cluster up in ${SECONDS}s; use: source ${REPO_ROOT}/e2e/cluster/env.sh"
}

main "$@"
