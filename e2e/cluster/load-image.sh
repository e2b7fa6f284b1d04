#!/usr/bin/env bash
# Import OCI image-layout archives (e.g. from go run ./e2e/image/cmd/ociimage) into the
# e2e cluster's containerd, where kubelet finds them. Use imagePullPolicy: Never or
# IfNotPresent: there is no registry to pull from.
#
#   e2e/cluster/load-image.sh busybox.tar [more.tar...]
set -euo pipefail

# shellcheck source=e2e/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# > 0)) || die "usage: $0 IMAGE.tar..."
for archive in "$@"; do
	[[ -f ${archive} ]] || die "${archive}: no such file"
	# ctr reads the archive inside the namespace: make the path absolute first.
	ns_exec "${BIN_DIR}/ctr" --address "${CONTAINERD_SOCK}" -n k8s.io images import \
		"$(realpath "${archive}")"
done
