#!/usr/bin/env bash
# Run sockhop's real-cluster tests from nothing: build the cluster's binaries and the
# images, start the cluster, run `SOCKHOP_E2E=1 go test ./e2e/...` inside it, and tear
# it down whatever happens (set SOCKHOP_E2E_KEEP=1 to keep it for inspection).
#
#   sudo e2e/run.sh [go test flags, e.g. -run 'TestE2E/helm' -v]
#
# The daemons' logs are copied to ${SOCKHOP_E2E_LOGS_DIR:-/tmp/sockhop-e2e-logs}.
# SOCKHOP_SOAK is how long TestSoak runs (default 45s; make soak: 10m).
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=e2e/lib.sh
source "${E2E_DIR}/lib.sh"

teardown() {
	local rc=$?
	if [[ ${SOCKHOP_E2E_KEEP:-} == 1 ]]; then
		step "cluster kept (SOCKHOP_E2E_KEEP=1); remove it with e2e/cluster/down.sh"
	else
		step "tear down"
		SOCKHOP_E2E_LOGS_DIR=${SOCKHOP_E2E_LOGS_DIR:-/tmp/sockhop-e2e-logs} "${E2E_DIR}/down.sh" || rc=1
	fi
	step "e2e finished (exit ${rc})"
	exit "${rc}"
}

main() {
	need_root
	step "build cluster binaries"
	"${E2E_DIR}/cluster/build.sh"
	step "build images"
	"${E2E_DIR}/images.sh" build
	trap teardown EXIT
	step "start the cluster"
	cluster_up
	step "import images"
	"${E2E_DIR}/images.sh" load
	step "go test ./e2e/... (soak: ${SOCKHOP_SOAK:=45s})"
	(cd "${REPO_ROOT}" && SOCKHOP_E2E=1 SOCKHOP_SOAK="${SOCKHOP_SOAK}" "${E2E_DIR}/cluster/exec.sh" go test -count=1 -timeout 30m "$@" ./e2e/...)
}

main "$@"
