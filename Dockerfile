# kipvs container image.
#
# Build:  docker build -t kipvs .
# Stage 1 compiles with the Rust toolchain; stage 2 is a small Debian with only what the
# node layer calls: iptables (iptables-restore/-save, nft and legacy backends), ipset
# (fallback when nfnetlink is unavailable), conntrack (stale UDP entries) and kmod
# (`kipvs prepare` loads ip_vs). See examples/kubernetes/daemonset.yaml for the
# privileges: a privileged init container runs `kipvs prepare`; `kipvs run` keeps only
# NET_ADMIN and NET_RAW.
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
