# Collector image from the otelcol-genops binary that collector-config/build-otelcol.sh builds (the
# components collector-config/builder-config.yaml lists), for clusters that run the genops distribution
# rather than the public contrib image. The build context is the directory holding the binary:
#   dir=$(mktemp -d); cp "$(collector-config/build-otelcol.sh)" "$dir/"
#   docker build -f k8s/otelcol.Dockerfile -t genops-otelcol:0.1.0 "$dir"
# The binary is static (CGO off), so any base with CA certificates serves.
ARG BASE_IMAGE=gcr.io/distroless/static-debian12:nonroot
FROM ${BASE_IMAGE}
COPY otelcol-genops /otelcol-genops
USER 10001:10001
EXPOSE 4317 4318 8888 13133
ENTRYPOINT ["/otelcol-genops"]
CMD ["--config=/etc/otelcol/otelcol-sidecar.yaml"]
