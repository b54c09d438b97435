"""OTLP/gRPC in and out, worker processes, the HTTP port and admission control."""
