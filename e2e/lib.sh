# shellcheck shell=bash disable=SC2034 # settings used by the scripts that source this file
# Shared functions of e2e/demo.sh and e2e/run.sh. Sourced, never run.

# shellcheck source=e2e/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"

SOCKHOP_NS=sockhop-system
SOCKHOP_RELEASE=sockhop
ACCEL_LABEL=sockhop.dev/accelerate=enabled
WORKLOAD_IMAGE=sockhop/mesh-workload:e2e
TOOLS_DIR="${SOCKHOP_E2E_IMAGES:-${SOCKHOP_CACHE}/images}/tools"

# step prints the name of a step and the seconds since the script started.
step() {
	printf '\n==> [+%ds] %s\n' "${SECONDS}" "$*"
}

kc() {
	ns_exec "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" "$@"
}

helm_ns() {
	ns_exec env KUBECONFIG="${KUBECONFIG_PATH}" HOME=/root "${BIN_DIR}/helm" "$@"
}

# cluster_up starts the cluster unless it is up, and mounts bpffs at /sys/fs/bpf in
# the cluster's private mount namespace when it is not mounted there (the mount
# disappears with the namespace on e2e/cluster/down.sh).
cluster_up() {
	if holder_pid >/dev/null && kc get --raw /readyz >/dev/null 2>&1; then
		echo "cluster already up"
	else
		"${REPO_ROOT}/e2e/cluster/up.sh"
	fi
	ns_exec sh -c 'mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf'
}

# helm_install_sockhop installs (or upgrades to) the chart from this checkout with
# the settings of the e2e node, and waits for the agent. Extra arguments go to helm.
helm_install_sockhop() {
	helm_ns upgrade --install "${SOCKHOP_RELEASE}" "${REPO_ROOT}/charts/sockhop" \
		-n "${SOCKHOP_NS}" --create-namespace --wait --timeout 3m \
		--set image.pullPolicy=Never \
		--set cgroup.driver=cgroupfs --set "cgroup.root=/${CGROUP_ROOT_NAME}" "$@"
}

# deploy_mesh_pods NS: a server and a client pod, each with Istio's interception rules
# (pilot-agent istio-iptables, as istio-init runs it) and a sidecar proxy (uid 1337).
deploy_mesh_pods() {
	local ns=$1 name
	for name in server client; do
		mesh_pod_yaml "${ns}" "${name}" | kc apply -f - >/dev/null
	done
	kc -n "${ns}" wait --for=condition=Ready pod/server pod/client --timeout=120s >/dev/null
}

# mesh_pod_yaml NS NAME [ANNOTATION...]: the manifest of a mesh pod; NAME server runs
# the servers (seed 42), anything else an idle app container to kubectl exec clients in.
mesh_pod_yaml() {
	local ns=$1 name=$2 app annotations="{}"
	shift 2
	if [[ ${name} == server* ]]; then
		app='[workload, server, -seed, "42"]'
	else
		app='[workload, sleep]'
	fi
	if (($# > 0)); then
		annotations="{$(IFS=,; echo "$*")}"
	fi
	cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: ${ns}
  labels: {app: ${name}}
  annotations: ${annotations}
spec:
  terminationGracePeriodSeconds: 2
  enableServiceLinks: false
  automountServiceAccountToken: false
  initContainers:
  - name: istio-init
    image: ${WORKLOAD_IMAGE}
    imagePullPolicy: Never
    command: [pilot-agent, istio-iptables, -p, "15001", -z, "15006", -u, "1337", -m, REDIRECT, -i, "*", -b, "*"]
    securityContext:
      runAsUser: 0
      runAsNonRoot: false
      capabilities: {drop: [ALL], add: [NET_ADMIN, NET_RAW]}
  containers:
  - name: app
    image: ${WORKLOAD_IMAGE}
    imagePullPolicy: Never
    command: ${app}
    securityContext: {runAsUser: 1000, runAsGroup: 1000}
  - name: istio-proxy
    image: ${WORKLOAD_IMAGE}
    imagePullPolicy: Never
    command: [workload, proxy]
    securityContext: {runAsUser: 1337, runAsGroup: 1337}
EOF
}

# wait_accelerated NS POD TIMEOUT_S waits for an Accelerated event of the pod (of
# this incarnation of it: events are matched by the pod's UID).
wait_accelerated() {
	local ns=$1 pod=$2 deadline=$((SECONDS + $3)) uid
	uid=$(kc -n "${ns}" get pod "${pod}" -o jsonpath='{.metadata.uid}')
	until [[ -n $(kc -n "${ns}" get events -o name \
		--field-selector "reason=Accelerated,involvedObject.uid=${uid}" 2>/dev/null) ]]; do
		((SECONDS < deadline)) || die "no Accelerated event for pod ${ns}/${pod} after $3s"
		sleep 1
	done
}
