# syntax=docker/dockerfile:1
# troupe: build with cargo, run on a slim Debian as a non-root user.

FROM rust:1.95-bookworm AS build
# etcd-client compiles etcd's protobuf definitions.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependency layer: compile every dependency against stub sources, so that
# a change to troupe's own code does not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY actors/Cargo.toml actors/
RUN mkdir -p src actors/src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs actors/src/lib.rs \
 && echo 'fn main() {}' > benches/runtime.rs && echo 'fn main() {}' > benches/apply.rs \
 && cargo build --release --locked --features etcd --bin troupe \
 && rm -rf src actors/src benches

COPY . .
# The build context has no .git: `make docker` passes the commit.
ARG TROUPE_COMMIT=""
RUN touch src/main.rs src/lib.rs actors/src/lib.rs \
 && cargo build --release --locked --features etcd --bin troupe

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="troupe" \
      org.opencontainers.image.description="An actor-based ledger service: accounts, deposits, withdrawals and all-or-nothing transfers" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.2.0-dev"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/troupe --shell /usr/sbin/nologin troupe \
 && mkdir -p /var/lib/troupe \
 && chown troupe:troupe /var/lib/troupe
COPY --from=build /src/target/release/troupe /usr/local/bin/troupe
COPY config /etc/troupe/config
ENV TROUPE_ENV=production \
    TROUPE_CONFIG_DIR=/etc/troupe/config \
    TROUPE__STORE__PATH=/var/lib/troupe
VOLUME ["/var/lib/troupe"]
EXPOSE 8080
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/troupe"]
