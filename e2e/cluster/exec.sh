#!/usr/bin/env bash
# Run a command inside the e2e cluster's network and mount namespaces, in the current
# directory, with KUBECONFIG, PATH and the client caches set for the cluster:
#
#   e2e/cluster/exec.sh kubectl get pods -A
#   e2e/cluster/exec.sh helm install sockhop charts/sockhop -n sockhop-system --create-namespace
#   e2e/cluster/exec.sh go test ./e2e/...
set -euo pipefail

# shellcheck source=e2e/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# > 0)) || die "usage: $0 COMMAND [ARG...]"
need_root
pid=$(holder_pid) || die "the e2e cluster is not up; run e2e/cluster/up.sh"
export PATH="${BIN_DIR}:${PATH}"
exec env "${CLIENT_ENV[@]}" nsenter --target "${pid}" --net --mount --wd="${PWD}" -- "$@"
