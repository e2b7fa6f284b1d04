#!/usr/bin/env bash
# Build the images of the e2e tests and the demo, without a container engine, and
# import them into the e2e cluster's containerd when it is up.
#
#   e2e/images.sh          build, then import if the cluster is up
#   e2e/images.sh build    build only
#   e2e/images.sh load     import what was built (the cluster must be up)
#
# Images:
#   sockhop/sockhop-agent:<chart appVersion>  /usr/local/bin/sockhop-agent and the CLI
#                                             /usr/local/bin/sockhop
#   sockhop/mesh-workload:e2e                 /usr/local/bin/workload (e2e/workload: app
#                                             server, load client, sidecar proxy),
#                                             Istio's pilot-agent (istio-iptables), Debian's
#                                             iptables (nft backend) with its shared
#                                             libraries, and busybox
#
# Archives go to ${SOCKHOP_CACHE}/images/. Istio's pilot-agent is built once from the
# Go module proxy (~2.5 min cold) into ${SOCKHOP_CACHE}/bin/istio-<version>/.
set -euo pipefail

# shellcheck source=e2e/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"

# istio.io/istio has no Go-semver tags: @latest resolves to a pseudo-version of its
# main branch. Pinned so that every machine installs the same interception rules.
ISTIO_VERSION=${ISTIO_VERSION:-v0.0.0-20260827124520-eed52ebb66ad}
ISTIO_DIR="${SOCKHOP_CACHE}/bin/istio-${ISTIO_VERSION}"
IMAGES_DIR=${SOCKHOP_E2E_IMAGES:-${SOCKHOP_CACHE}/images}
APP_VERSION=$(awk '/^appVersion:/ { gsub(/"/, "", $2); print $2 }' "${REPO_ROOT}/charts/sockhop/Chart.yaml")
AGENT_IMAGE="sockhop/sockhop-agent:${APP_VERSION}"
WORKLOAD_IMAGE="sockhop/mesh-workload:e2e"
# Where pilot-agent istio-iptables looks for iptables: the names it may run.
IPTABLES_NAMES=(iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore
	iptables-nft iptables-nft-save iptables-nft-restore ip6tables-nft ip6tables-nft-save ip6tables-nft-restore)

TOOLS_DIR="${IMAGES_DIR}/tools"

build_go() {
	log "build sockhop-agent, sockhop, workload, ociimage (CGO_ENABLED=0)"
	local pkg
	for pkg in cmd/sockhop-agent cmd/sockhop; do
		compgen -G "${REPO_ROOT}/${pkg}/*.go" >/dev/null || die "${pkg} has no Go files yet: nothing to put in ${AGENT_IMAGE}"
	done
	mkdir -p "${TOOLS_DIR}"
	local version="${VERSION:-$("${REPO_ROOT}/hack/version.sh")}"
	log "version ${version}"
	(cd "${REPO_ROOT}" && CGO_ENABLED=0 go build -ldflags "-s -w -X main.version=${version}" -o "${TOOLS_DIR}/" \
		./cmd/sockhop-agent ./cmd/sockhop ./e2e/workload ./e2e/image/cmd/ociimage)
}

build_pilot_agent() {
	if [[ -x "${ISTIO_DIR}/pilot-agent" ]]; then
		log "istio pilot-agent ${ISTIO_VERSION}: up to date"
		return 0
	fi
	log "istio pilot-agent ${ISTIO_VERSION}: building (cold: ~2.5 min)"
	mkdir -p "${ISTIO_DIR}"
	local scratch
	scratch=$(mktemp -d "${ISTIO_DIR}/.build.XXXXXX")
	(cd / && GOBIN="${scratch}" CGO_ENABLED=0 go install -ldflags "-s -w" \
		"istio.io/istio/pilot/cmd/pilot-agent@${ISTIO_VERSION}")
	mv -f "${scratch}/pilot-agent" "${ISTIO_DIR}/pilot-agent"
	rm -rf "${scratch}"
}

build_agent_image() {
	"${TOOLS_DIR}/ociimage" --name "${AGENT_IMAGE}" \
		--file "/usr/local/bin/sockhop-agent=${TOOLS_DIR}/sockhop-agent" \
		--file "/usr/local/bin/sockhop=${TOOLS_DIR}/sockhop" \
		--dir /tmp:1777 --env PATH=/usr/local/bin \
		--entrypoint /usr/local/bin/sockhop-agent \
		-o "${IMAGES_DIR}/sockhop-agent.tar"
	log "built ${AGENT_IMAGE}"
}

# build_workload_image packs the workload, pilot-agent, iptables and busybox.
# iptables is Debian's dynamically linked xtables-nft-multi: it goes in with the
# shared libraries ldd names, the loader, and the xtables extensions it dlopens
# (REDIRECT, owner, tcp, mark, ...).
build_workload_image() {
	local xt lib busybox applet args=()
	xt=$(readlink -f /usr/sbin/xtables-nft-multi) || die "xtables-nft-multi missing: apt-get install iptables"
	busybox=$(command -v busybox) || die "busybox missing: run e2e/cluster/build.sh"
	args=(--name "${WORKLOAD_IMAGE}"
		--file "/usr/local/bin/workload=${TOOLS_DIR}/workload"
		--file "/usr/local/bin/pilot-agent=${ISTIO_DIR}/pilot-agent"
		--file "/usr/sbin/xtables-nft-multi=${xt}"
		--file "/bin/busybox=${busybox}"
		--file "/etc/protocols=/etc/protocols"
		--dir /tmp:1777 --dir /run:0755 --dir /var/run:0755
		--env PATH=/usr/local/bin:/usr/sbin:/bin
		--entrypoint /usr/local/bin/workload)
	for applet in "${IPTABLES_NAMES[@]}"; do
		args+=(--symlink "/usr/sbin/${applet}=xtables-nft-multi")
	done
	# The loader and every library, at the paths ldd resolves them to (both the
	# /lib64 loader path and the multiarch directory, as on Debian).
	while read -r lib; do
		args+=(--file "${lib}=$(readlink -f "${lib}")")
	done < <(ldd "${xt}" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' | sort -u)
	# libxtables looks for extensions in the directory it was built with (Debian:
	# /usr/lib/<multiarch>/xtables); XTABLES_LIBDIR in the image says it again.
	local extdir
	extdir=$(compgen -G '/usr/lib/*/xtables' | head -n 1) || die "xtables extensions not found under /usr/lib/*/xtables"
	args+=(--env "XTABLES_LIBDIR=${extdir}")
	for lib in "${extdir}"/*.so; do
		if [[ -L ${lib} ]]; then
			args+=(--symlink "${lib}=$(readlink "${lib}")")
		else
			args+=(--file "${lib}=${lib}")
		fi
	done
	for applet in $(busybox --list); do
		case ${applet} in busybox | iptables* | ip6tables*) continue ;; esac
		args+=(--symlink "/bin/${applet}=busybox")
	done
	"${TOOLS_DIR}/ociimage" "${args[@]}" -o "${IMAGES_DIR}/mesh-workload.tar"
	log "built ${WORKLOAD_IMAGE}"
}

load_images() {
	holder_pid >/dev/null || die "the e2e cluster is not up: run e2e/cluster/up.sh"
	"${REPO_ROOT}/e2e/cluster/load-image.sh" "${IMAGES_DIR}/sockhop-agent.tar" "${IMAGES_DIR}/mesh-workload.tar" >/dev/null
	log "imported ${AGENT_IMAGE} and ${WORKLOAD_IMAGE}"
}

build_all() {
	mkdir -p "${IMAGES_DIR}"
	build_go
	build_pilot_agent
	build_agent_image
	build_workload_image
}

main() {
	case "${1:-all}" in
	all)
		build_all
		if holder_pid >/dev/null; then load_images; else log "cluster not up: images built, not imported"; fi
		;;
	build) build_all ;;
	load) load_images ;;
	*) die "usage: $0 [all|build|load]" ;;
	esac
	log "done in ${SECONDS}s"
}

main "$@"
