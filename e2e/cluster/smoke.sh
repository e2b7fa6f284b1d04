#!/usr/bin/env bash
# Check that a running e2e cluster (up.sh) does what the e2e tests rely on: an image
# built by ociimage and imported without a registry runs; two containers of a pod
# talk over loopback; `kubectl logs` and `kubectl exec` work; the kubernetes Service
# IP answers from a pod (kube-proxy, bridge) and from the node's namespace (route).
set -euo pipefail

# shellcheck source=e2e/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BUSYBOX_IMAGE=sockhop/busybox:e2e
POD=sockhop-smoke

kubectl_ns() {
	ns_exec "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" "$@"
}

# build_busybox_image packs Debian's static busybox with a link per applet.
build_busybox_image() {
	local busybox applet args=()
	busybox=$(command -v busybox) || die "busybox missing: run e2e/cluster/build.sh"
	args=(--name "${BUSYBOX_IMAGE}" --file "/bin/busybox=${busybox}" --dir /tmp:1777 --env PATH=/bin)
	for applet in $(busybox --list); do
		[[ ${applet} == busybox ]] || args+=(--symlink "/bin/${applet}=busybox")
	done
	(cd "${REPO_ROOT}" && go run ./e2e/image/cmd/ociimage "${args[@]}" -o "${STATE_DIR}/images/busybox.tar")
	"${REPO_ROOT}/e2e/cluster/load-image.sh" "${STATE_DIR}/images/busybox.tar" >/dev/null
	log "built and imported ${BUSYBOX_IMAGE}"
}

run_pod() {
	kubectl_ns apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: ${POD}
  namespace: default
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: ${BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, 'mkdir -p /tmp/www && echo hello-over-loopback >/tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www']
  - name: client
    image: ${BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, 'while true; do wget -q -O - http://127.0.0.1:8080/ || echo fetch failed; sleep 1; done']
EOF
	local start=${SECONDS}
	kubectl_ns wait --for=condition=Ready "pod/${POD}" --timeout=60s >/dev/null
	log "pod ${POD} ready in $((SECONDS - start))s"
}

check_pod() {
	local out deadline=$((SECONDS + 20))
	until kubectl_ns logs "${POD}" -c client | grep -q hello-over-loopback; do
		((SECONDS < deadline)) || die "client never fetched from the server over loopback: $(kubectl_ns logs "${POD}" -c client | tail -3)"
		sleep 0.5
	done
	log "kubectl logs: client fetched from server over loopback"
	out=$(kubectl_ns exec "${POD}" -c client -- wget -q -O - http://127.0.0.1:8080/)
	[[ ${out} == hello-over-loopback ]] || die "kubectl exec: got ${out@Q}"
	log "kubectl exec: ok"
	# busybox nc has no -z: connect, send nothing, and let the exit code tell.
	kubectl_ns exec "${POD}" -c client -- sh -c "nc -w 3 ${API_SERVICE_IP} 443 </dev/null" ||
		die "pod cannot reach the kubernetes Service at ${API_SERVICE_IP}:443"
	log "Service IP from a pod: ok"
	ns_exec bash -c "exec 3<>/dev/tcp/${API_SERVICE_IP}/443" ||
		die "node namespace cannot reach the kubernetes Service at ${API_SERVICE_IP}:443"
	log "Service IP from the node namespace: ok"
}

delete_pod() {
	kubectl_ns delete pod "${POD}" --wait=true --timeout=60s >/dev/null
	log "pod deleted"
}

main() {
	need_root
	holder_pid >/dev/null || die "the e2e cluster is not up; run e2e/cluster/up.sh"
	build_busybox_image
	run_pod
	check_pod
	delete_pod
	log "smoke test passed in ${SECONDS}s"
}

main "$@"
