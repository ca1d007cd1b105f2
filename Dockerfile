# syntax=docker/dockerfile:1
# Two images from one build (docs/operations.md, "Images"):
#   docker build --target node     -t ghcr.io/sluice-streaming/sluice:0.1.0 .
#   docker build --target operator -t ghcr.io/sluice-streaming/sluice-operator:0.1.0 .
# The node image holds `sluice` (entrypoint; the StatefulSet runs `sluice
# serve`), the operator image `sluice-operator`. Both run as a non-root user
# on distroless: glibc and libstdc++ (RocksDB), no shell, no package manager.

ARG RUST_VERSION=1.90
ARG VERSION=0.1.0

FROM rust:${RUST_VERSION}-bookworm AS build
# clang for bindgen (rocksdb), protoc for the replication service, OpenSSL
# headers for TLS and SCRAM in the CLI's librdkafka.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev protobuf-compiler \
    libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Caches keep the registry and RocksDB's objects between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p sluice-node -p sluice-operator --bins \
 && mkdir -p /out/data \
 && cp target/release/sluice target/release/sluice-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS node
ARG VERSION
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Sluice storage node: Kafka wire protocol on RocksDB" \
      org.opencontainers.image.source="https://github.com/sluice-streaming/sluice" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/sluice /usr/local/bin/sluice
# The node's data directory, the user's own (the StatefulSet mounts a PVC
# here; a plain `docker run` gets a volume it can write).
COPY --from=build --chown=10001:10001 /out/data /var/lib/sluice
VOLUME ["/var/lib/sluice"]
USER 10001:10001
EXPOSE 9092 9095 9644
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["serve"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
ARG VERSION
LABEL org.opencontainers.image.title="sluice-operator" \
      org.opencontainers.image.description="Sluice operator: Topics, ConsumerGroups and the storage nodes on Kubernetes" \
      org.opencontainers.image.source="https://github.com/sluice-streaming/sluice" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/sluice-operator /usr/local/bin/sluice-operator
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice-operator"]
