#!/usr/bin/env bash
# Make local stand-ins for the public base images of k8s/Dockerfile and k8s/otelcol.Dockerfile from
# Debian packages, for machines that can reach Debian's archive but no image registry (CI).
#
# Usage: k8s/image/make-bases.sh            # prints the build args to pass, one per line
#
# Images (podman, local storage), rebuilt only when missing or when this script changes:
#   localhost/genops-base/python:3.11-bookworm  python3.11 + venv on Debian minbase (for python:3.11-slim-bookworm)
#   localhost/genops-base/rust:bookworm         /usr/local/{cargo,rustup} from this machine's rustup toolchain
#                                               (only COPY --from'd, for rust:*-slim-bookworm)
#   localhost/genops-base/static:bookworm       Debian minbase with CA certificates (for the Collector)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
suite="${GENOPS_BASE_SUITE:-bookworm}"
mirror="${GENOPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Stamped into each image so an edit of this script (or of the local CAs below) rebuilds the bases.
stamp="$(cat "${BASH_SOURCE[0]}" /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-16)"

log() { echo "make-bases: $*" >&2; }

have() {
  [[ "$(podman image inspect --format '{{index .Config.Labels "genops.base.stamp"}}' "$1" 2>/dev/null)" == "$stamp" ]]
}

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# The CAs this machine added to its trust store (a TLS-intercepting egress proxy, a company CA) are
# trusted in the bases too, so pip, cargo and apt inside a build reach the same registries as the host.
local_cas=/usr/local/share/ca-certificates
trust_local_cas=':'
if compgen -G "$local_cas/*.crt" >/dev/null; then
  trust_local_cas="mkdir -p \"\$1$local_cas\" && cp $local_cas/*.crt \"\$1$local_cas/\" && chroot \"\$1\" update-ca-certificates"
fi

debian_base() { # name, then extra packages
  local name="$1"
  shift
  if have "$name"; then return; fi
  local includes="ca-certificates"
  local pkg
  for pkg in "$@"; do includes+=",$pkg"; done
  log "mmdebstrap $suite minbase + $includes -> $name"
  # Docs, man pages and locales are dropped as the slim public images do.
  mmdebstrap --variant=minbase --include="$includes" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook="$trust_local_cas" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$suite" "$scratch/rootfs.tar" "deb $mirror $suite main" >&2
  podman import --change "LABEL genops.base.stamp=$stamp" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' "$scratch/rootfs.tar" "$name" >/dev/null
  rm -f "$scratch/rootfs.tar"
}

rust_base() {
  local name="$1"
  if have "$name"; then return; fi
  local toolchain
  toolchain="$(rustc --print sysroot)"
  log "rust toolchain $toolchain -> $name"
  # The layout of the official Rust image: cargo and rustc on /usr/local/cargo/bin, the toolchain under
  # /usr/local/rustup. Only bin/, lib/ and libexec/ are taken; docs and sources are not needed to build.
  mkdir -p "$scratch/rust/usr/local/cargo/bin" "$scratch/rust/usr/local/rustup/toolchain"
  cp -a "$toolchain/bin" "$toolchain/lib" "$toolchain/libexec" "$scratch/rust/usr/local/rustup/toolchain/"
  local tool
  for tool in cargo rustc rustdoc; do
    ln -s "../../rustup/toolchain/bin/$tool" "$scratch/rust/usr/local/cargo/bin/$tool"
  done
  tar -C "$scratch/rust" -cf "$scratch/rust.tar" usr
  podman import --change "LABEL genops.base.stamp=$stamp" "$scratch/rust.tar" "$name" >/dev/null
  rm -rf "$scratch/rust" "$scratch/rust.tar"
}

debian_base localhost/genops-base/python:3.11-bookworm python3 python3-venv python-is-python3
debian_base localhost/genops-base/static:bookworm
rust_base localhost/genops-base/rust:bookworm

echo "PYTHON_IMAGE=localhost/genops-base/python:3.11-bookworm"
echo "RUST_IMAGE=localhost/genops-base/rust:bookworm"
echo "BASE_IMAGE=localhost/genops-base/static:bookworm"
