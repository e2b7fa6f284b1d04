# shellcheck shell=bash
# Source me (bash): sets up the shell for the e2e cluster started by up.sh.
#
#   source e2e/cluster/env.sh
#   e2e_exec kubectl get nodes      # any command, inside the cluster's namespaces
#
# Exports KUBECONFIG, PATH (the cluster's kubectl, helm, ctr first), SOCKHOP_E2E_NODE,
# SOCKHOP_E2E_STATE, SOCKHOP_E2E_BIN_DIR, CONTAINERD_ADDRESS, kubectl's and helm's cache
# directories (inside the state directory), and defines e2e_exec. The API server
# listens only inside the cluster's network namespace: kubectl, helm and tests must
# run through e2e_exec (or e2e/cluster/exec.sh).
SOCKHOP_E2E_CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
eval "$(bash -c 'source "$1/lib.sh"
	printf "export SOCKHOP_E2E_BIN_DIR=%q\n" "${BIN_DIR}"
	for kv in "${CLIENT_ENV[@]}"; do printf "export %s=%q\n" "${kv%%=*}" "${kv#*=}"; done' \
	_ "${SOCKHOP_E2E_CLUSTER_DIR}")"
export PATH="${SOCKHOP_E2E_BIN_DIR}:${PATH}"

e2e_exec() {
	"${SOCKHOP_E2E_CLUSTER_DIR}/exec.sh" "$@"
}
