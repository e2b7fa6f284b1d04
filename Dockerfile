# syntax=docker/dockerfile:1
# The sockhop image: the node agent (/usr/local/bin/sockhop-agent) and the
# operator CLI (/usr/local/bin/sockhop). The BPF objects are embedded in the Go
# binaries by bpf2go (committed under pkg/datapath), so building needs no C
# toolchain and the image holds nothing else.
#
#   docker build --build-arg VERSION="$(hack/version.sh)" -t sockhop/sockhop-agent:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t sockhop/sockhop-agent:dev .

FROM --platform=$BUILDPLATFORM golang:1.26 AS builder
ARG TARGETOS=linux
ARG TARGETARCH
# What `sockhop version` and sockhop_build_info report (hack/version.sh).
ARG VERSION=dev
WORKDIR /src
# Modules first, so that source edits do not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static binaries (no cgo): the final image has no libc.
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/ ./cmd/sockhop-agent ./cmd/sockhop

# static, not static:nonroot: the agent runs as root (bpffs pins and the cgroup
# tree are root-owned on the host); its privileges are the capabilities the
# Helm chart grants, nothing more.
FROM gcr.io/distroless/static-debian12
COPY --from=builder /out/sockhop-agent /out/sockhop /usr/local/bin/
USER 0:0
ENTRYPOINT ["/usr/local/bin/sockhop-agent"]
