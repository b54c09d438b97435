#!/usr/bin/env bash
# Build the sidecar image and the Collector image with podman from local Debian-made bases
# (k8s/image/make-bases.sh), the way CI does; no image registry is needed.
#
# Usage: k8s/image/build.sh   # prints the two image names on stdout, sizes on stderr
#   GENOPS_SIDECAR_IMAGE / GENOPS_OTELCOL_IMAGE   the tags (default localhost/genops-sidecar:ci,
#                                                 localhost/genops-otelcol:ci)
# Layers are cached in podman's storage, so a rebuild after a test-only change takes seconds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
sidecar_image="${GENOPS_SIDECAR_IMAGE:-localhost/genops-sidecar:ci}"
otelcol_image="${GENOPS_OTELCOL_IMAGE:-localhost/genops-otelcol:ci}"

log() { echo "image-build: $*" >&2; }

build_args=()
while IFS= read -r arg; do build_args+=(--build-arg "$arg"); done < <("$here/make-bases.sh")

# chroot isolation needs no cgroups or user namespaces; the build's network is the host's (PyPI,
# crates.io and Debian are fetched inside the build).
start=$SECONDS
podman build --isolation=chroot --layers "${build_args[@]}" \
  -f "$repo/k8s/Dockerfile" --ignorefile "$repo/k8s/Dockerfile.dockerignore" -t "$sidecar_image" "$repo" >&2
log "$sidecar_image built in $((SECONDS - start))s"

otelcol="$("$repo/collector-config/build-otelcol.sh")"
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$otelcol" "$context/otelcol-genops"
podman build --isolation=chroot --layers "${build_args[@]}" \
  -f "$repo/k8s/otelcol.Dockerfile" -t "$otelcol_image" "$context" >&2

for image in "$sidecar_image" "$otelcol_image"; do
  log "$image: $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec-i --suffix=B)"
done
echo "$sidecar_image"
echo "$otelcol_image"
