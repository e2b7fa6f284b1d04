#!/usr/bin/env bash
# Prints the version stamped into sockhop's binaries (-X main.version): the
# nearest tag and commit from git describe, else the VERSION file of a
# source tarball, else "dev".
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if v=$(git -C "${root}" describe --tags --always --dirty 2>/dev/null) && [[ -n "${v}" ]]; then
	echo "${v}"
elif [[ -s "${root}/VERSION" ]]; then
	tr -d '[:space:]' <"${root}/VERSION"
	echo
else
	echo dev
fi
