# kipvs container image: build with the Rust toolchain, run on a small Debian base with
# the tools the masquerade layer uses (iptables, ipset). The DaemonSet grants NET_ADMIN.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kipvs

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ipset kmod conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kipvs /usr/local/bin/kipvs
ENTRYPOINT ["/usr/local/bin/kipvs"]
CMD ["run", "--config", "/var/lib/kube-proxy/config.conf"]
