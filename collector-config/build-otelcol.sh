#!/usr/bin/env bash
# Build the genops OpenTelemetry Collector distribution (otelcol-genops) with ocb and cache it.
#
# Usage: collector-config/build-otelcol.sh [MANIFEST]
#
# Prints only the absolute path of the binary on stdout; everything else goes to stderr, so callers can do
#   OTELCOL="$(collector-config/build-otelcol.sh)"
#
# The binary lives under ${XDG_CACHE_HOME:-$HOME/.cache}/genops-sidecar/otelcol/<key>/otelcol-genops, where
# <key> hashes the manifest and the ocb version: an unchanged manifest returns at once, an edited one rebuilds.
# The only network access is the Go module proxy (ocb itself and the Collector's modules).
set -euo pipefail

OCB_VERSION="v0.162.0"
BINARY_NAME="otelcol-genops"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="${1:-$script_dir/builder-config.yaml}"
if [[ ! -f "$manifest" ]]; then
  echo "build-otelcol: manifest not found: $manifest" >&2
  exit 2
fi
manifest="$(cd "$(dirname "$manifest")" && pwd)/$(basename "$manifest")"

log() { echo "build-otelcol: $*" >&2; }

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/genops-sidecar/otelcol"
key="$( { printf 'ocb=%s\n' "$OCB_VERSION"; cat "$manifest"; } | sha256sum | cut -c1-16)"
target_dir="$cache_root/$key"
binary="$target_dir/$BINARY_NAME"

if [[ -x "$binary" ]]; then
  echo "$binary"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  log "the Go toolchain (go) is required to build the Collector"
  exit 1
fi

# A toolchain switch would download a Go release, which is not a module the proxy is meant to serve here.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
# The scratch module can sit inside an unrelated git checkout (a dotfiles $HOME), where VCS stamping fails.
case " ${GOFLAGS:-} " in
  *" -buildvcs="*) ;;
  *) export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false" ;;
esac

mkdir -p "$cache_root"
# Concurrent callers (parallel test workers, CI steps) must not run two multi-minute builds of the same key.
exec 9>"$cache_root/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi
if [[ -x "$binary" ]]; then
  echo "$binary"
  exit 0
fi

ocb_bin_dir="$cache_root/ocb-$OCB_VERSION"
ocb="$ocb_bin_dir/builder"
if [[ ! -x "$ocb" ]]; then
  log "installing ocb $OCB_VERSION into $ocb_bin_dir"
  GOBIN="$ocb_bin_dir" go install "go.opentelemetry.io/collector/cmd/builder@$OCB_VERSION" >&2
fi

work_dir="$(mktemp -d "$cache_root/build-$key.XXXXXX")"
cleanup() { rm -rf "$work_dir"; }
trap cleanup EXIT

# ocb resolves dist.output_path against its working directory, so it runs inside the scratch directory.
cp "$manifest" "$work_dir/builder-config.yaml"
log "building $BINARY_NAME (key $key) in $work_dir; the first build takes several minutes"
start=$SECONDS
(cd "$work_dir" && "$ocb" --config builder-config.yaml) >&2
built="$(find "$work_dir" -type f -name "$BINARY_NAME" -perm -u+x -print -quit)"
if [[ -z "$built" ]]; then
  log "ocb finished but produced no $BINARY_NAME binary under $work_dir"
  exit 1
fi
"$built" --version >&2

# Publish with a rename so a reader never sees a half-copied binary.
mkdir -p "$target_dir"
cp "$built" "$target_dir/.$BINARY_NAME.tmp"
chmod 0755 "$target_dir/.$BINARY_NAME.tmp"
mv -f "$target_dir/.$BINARY_NAME.tmp" "$binary"
log "built in $((SECONDS - start))s"
echo "$binary"
