#!/usr/bin/env bash
# Regenerates the committed Python modules from the .proto files in this folder.
# tests/core/test_lean_proto.py fails when the committed modules drift from the sources.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../processor/protos}"
python -m grpc_tools.protoc -I"$here/genops/v1" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$here"/genops/v1/*.proto
# protoc writes `import x_pb2` in the *_grpc modules; inside the processor.protos package that
# has to be a relative import.
sed -i 's/^import \(.*_pb2\) as/from . import \1 as/' "$out"/*_pb2_grpc.py
