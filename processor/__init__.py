"""genops-sidecar: an OTLP/gRPC processor beside the OpenTelemetry Collector."""
