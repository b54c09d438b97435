#!/usr/bin/env bash
# Build the benchmark Collector (otlp receiver, transform + redaction processors, otlp exporter) with ocb
# and cache it; prints only the binary's absolute path on stdout, like collector-config/build-otelcol.sh.
#
# A separate build because the benchmark needs the transform processor at a release whose modules the
# Go module proxy here serves (see manifest.yaml); the cache key hashes the manifest and the ocb version.
set -euo pipefail

OCB_VERSION="v0.161.0"
BINARY_NAME="otelcol-genops-bench"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="$script_dir/manifest.yaml"
log() { echo "benchmarks/otelcol/build: $*" >&2; }

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/genops-sidecar/otelcol-bench"
key="$( { printf 'ocb=%s\n' "$OCB_VERSION"; cat "$manifest"; } | sha256sum | cut -c1-16)"
binary="$cache_root/$key/$BINARY_NAME"
if [[ -x "$binary" ]]; then
  echo "$binary"
  exit 0
fi
command -v go >/dev/null 2>&1 || { log "the Go toolchain (go) is required"; exit 1; }
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
case " ${GOFLAGS:-} " in *" -buildvcs="*) ;; *) export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false" ;; esac

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [[ -x "$binary" ]]; then
  echo "$binary"
  exit 0
fi
ocb="$cache_root/ocb-$OCB_VERSION/builder"
if [[ ! -x "$ocb" ]]; then
  log "installing ocb $OCB_VERSION"
  GOBIN="$(dirname "$ocb")" go install "go.opentelemetry.io/collector/cmd/builder@$OCB_VERSION" >&2
fi
work_dir="$(mktemp -d "$cache_root/build-$key.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT
cp "$manifest" "$work_dir/builder-config.yaml"
log "building $BINARY_NAME (key $key); the first build takes several minutes"
# Niced: the benchmark machine is usually shared with test runs.
(cd "$work_dir" && nice -n 19 "$ocb" --config builder-config.yaml) >&2
built="$(find "$work_dir" -type f -name "$BINARY_NAME" -perm -u+x -print -quit)"
[[ -n "$built" ]] || { log "ocb produced no $BINARY_NAME under $work_dir"; exit 1; }
mkdir -p "$(dirname "$binary")"
cp "$built" "$binary.tmp"
chmod 0755 "$binary.tmp"
mv -f "$binary.tmp" "$binary"
echo "$binary"
