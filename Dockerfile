# syntax=docker/dockerfile:1.7
# One image, three binaries: slotq-ingress, slotq-workers, slotq-scheduler (each also runs
# `migrate`). The runtime stage is distroless (glibc, CA certificates, no shell) and runs as
# the unprivileged user 65532.
#
#   docker build -t slotq:local .
#   docker run --rm -e DATABASE_URL=postgres://… slotq:local slotq-ingress migrate
#   docker run --rm -p 8080:8080 -e DATABASE_URL=… -e REDIS_URL=… slotq:local
#
# compose.yaml runs the whole stack with PostgreSQL, Redis and Kafka.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# librdkafka (the Kafka relay) is built from C by rdkafka-sys with its configure script:
# the rust image already has gcc, make and perl; compression, TLS and SASL are disabled, so
# the binaries link nothing beyond glibc.
COPY . .
# Migrations are embedded at compile time (sqlx::migrate!) and SQL is checked at run time,
# so the build needs no database.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
      --bin slotq-ingress --bin slotq-workers --bin slotq-scheduler \
 && install -D -m 0755 -t /out \
      target/release/slotq-ingress target/release/slotq-workers target/release/slotq-scheduler

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/ /usr/local/bin/
# Listen on all interfaces inside the container (the local defaults are 127.0.0.1).
ENV LOG_FORMAT=json \
    HTTP_ADDR=0.0.0.0:8080 \
    ADMIN_ADDR=0.0.0.0:9090
EXPOSE 8080 9090
USER 65532:65532
# SIGTERM drains: ingress stops accepting and finishes in-flight requests, workers finish or
# hand back their claimed jobs, the scheduler finishes its sweep.
STOPSIGNAL SIGTERM
CMD ["slotq-ingress", "serve"]
