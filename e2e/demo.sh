#!/usr/bin/env bash
# sockhop in one go, on a single-node cluster started on this machine (`sudo make demo`):
#
#   1. build the cluster's binaries and the images (seconds when cached; ~10 min cold)
#   2. start the cluster (e2e/cluster/up.sh) unless it is up
#   3. helm install sockhop
#   4. run a client and a server pod, each with Istio's iptables interception
#      (istio-init) and a sidecar proxy, in a namespace that is not opted in
#   5. measure request latency and throughput through the mesh
#   6. opt the namespace in, recreate the pods, wait for the Accelerated events
#   7. measure again, print both side by side, and the agent's datapath counters
#
# The cluster stays up for a look around; `sudo make e2e-down` (e2e/cluster/down.sh)
# removes it. Settings: DEMO_DURATION (seconds per latency run, default 10),
# DEMO_CONNS (connections, default 4), DEMO_SIZE (request size, default 1024).
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=e2e/lib.sh
source "${E2E_DIR}/lib.sh"

DEMO_NS=sockhop-demo
DURATION=${DEMO_DURATION:-10}
CONNS=${DEMO_CONNS:-4}
SIZE=${DEMO_SIZE:-1024}
OUT=$(mktemp -d /tmp/sockhop-demo.XXXXXX)
trap 'rm -rf "${OUT}"' EXIT

# measure NAME: request/response latency and throughput, then checksummed streams,
# each from a new process in the client's app container (so new connections).
measure() {
	local name=$1 server_ip
	server_ip=$(kc -n "${DEMO_NS}" get pod server -o jsonpath='{.status.podIP}')
	kc -n "${DEMO_NS}" exec client -c app -- workload client -mode rr -target "${server_ip}:8080" \
		-conns "${CONNS}" -size "${SIZE}" -duration "${DURATION}s" >"${OUT}/${name}-rr.json"
	kc -n "${DEMO_NS}" exec client -c app -- workload client -mode stream -target "${server_ip}:8081" \
		-conns "${CONNS}" -bytes $((64 << 20)) -expect-seed 42 >"${OUT}/${name}-stream.json"
	sed 's/^/    /' "${OUT}/${name}-rr.json" "${OUT}/${name}-stream.json"
}

main() {
	need_root
	step "build cluster binaries (e2e/cluster/build.sh)"
	"${E2E_DIR}/cluster/build.sh"
	step "build images (e2e/images.sh build)"
	"${E2E_DIR}/images.sh" build
	step "start the cluster"
	cluster_up
	step "import images"
	"${E2E_DIR}/images.sh" load
	step "helm install sockhop"
	helm_install_sockhop
	step "agent ready"
	kc -n "${SOCKHOP_NS}" get pods -o wide

	step "deploy client and server with istio-init and a sidecar in namespace ${DEMO_NS} (not opted in)"
	kc delete namespace "${DEMO_NS}" --ignore-not-found --wait >/dev/null
	kc create namespace "${DEMO_NS}" >/dev/null
	deploy_mesh_pods "${DEMO_NS}"
	step "measure without sockhop (${DURATION}s request/response, then 64 MiB streams x ${CONNS})"
	measure before

	step "opt in: kubectl label namespace ${DEMO_NS} ${ACCEL_LABEL}"
	kc label namespace "${DEMO_NS}" "${ACCEL_LABEL}" >/dev/null
	step "recreate the pods so that every connection is new"
	kc -n "${DEMO_NS}" delete pod client server --wait >/dev/null
	deploy_mesh_pods "${DEMO_NS}"
	step "wait for the Accelerated events"
	wait_accelerated "${DEMO_NS}" client 60
	wait_accelerated "${DEMO_NS}" server 60
	kc -n "${DEMO_NS}" get events --field-selector reason=Accelerated
	step "measure with sockhop"
	measure after

	step "result"
	echo
	"${TOOLS_DIR}/workload" table "${OUT}"/before-rr.json "${OUT}"/after-rr.json \
		"${OUT}"/before-stream.json "${OUT}"/after-stream.json
	echo
	step "datapath counters (sockhop status in the agent pod)"
	kc -n "${SOCKHOP_NS}" exec "ds/${SOCKHOP_RELEASE}" -- sockhop status
	cat <<EOF

The cluster is still up. Look around (the API server is reachable only inside the
cluster's namespace, hence e2e/cluster/exec.sh):
  sudo e2e/cluster/exec.sh kubectl get events -n ${DEMO_NS}
  sudo e2e/cluster/exec.sh kubectl -n ${SOCKHOP_NS} exec ds/${SOCKHOP_RELEASE} -- sockhop status
  sudo e2e/cluster/exec.sh kubectl -n ${SOCKHOP_NS} port-forward ds/${SOCKHOP_RELEASE} 9962 &
  sudo e2e/cluster/exec.sh curl -s localhost:9962/metrics | grep ^sockhop_
  sudo e2e/cluster/exec.sh kubectl -n ${DEMO_NS} exec client -c app -- workload client -target SERVER_IP:8080
Tear down:
  sudo make e2e-down
EOF
	step "demo done"
}

main "$@"
