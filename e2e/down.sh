#!/usr/bin/env bash
# Stop the e2e cluster like an operator would leave a node: first `helm uninstall`
# sockhop (its agent removes every program, link and pin from the node — the host's
# bpffs when one is mounted there), then tear the cluster down (e2e/cluster/down.sh).
# Safe when nothing is up.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=e2e/lib.sh
source "${E2E_DIR}/lib.sh"

if holder_pid >/dev/null && kc get --raw /readyz >/dev/null 2>&1; then
	if helm_ns status "${SOCKHOP_RELEASE}" -n "${SOCKHOP_NS}" >/dev/null 2>&1; then
		step "helm uninstall ${SOCKHOP_RELEASE} (the agent removes its pins)"
		helm_ns uninstall "${SOCKHOP_RELEASE}" -n "${SOCKHOP_NS}" --wait --timeout 2m ||
			echo "helm uninstall failed; tearing the cluster down anyway" >&2
		# The agent uninstalls on SIGTERM; wait until its pods are gone.
		for _ in $(seq 60); do
			[[ -z $(kc -n "${SOCKHOP_NS}" get pods -l app.kubernetes.io/name=sockhop -o name 2>/dev/null) ]] && break
			sleep 1
		done
	fi
fi
exec "${E2E_DIR}/cluster/down.sh"
