# kipvs container image.
#
# Build, tagged with the crate version as examples/kubernetes/kipvs/daemonset.yaml pins it:
#   docker build --build-arg KIPVS_GIT_COMMIT=$(git rev-parse --short HEAD) \
#     -t ghcr.io/kipvs/kipvs:$(cargo pkgid -p kipvs | cut -d'#' -f2) .
# The build context has no .git (.dockerignore), so the commit `kipvs version` prints
# comes from KIPVS_GIT_COMMIT; without it, `unknown`.
#
# Stage 1 compiles with the Rust toolchain and strips the binary (symbols and debug
# information; local release builds keep line tables for profiling). Stage 2 is a small
# Debian with only what the node layer calls: iptables (iptables-restore/-save, nft and
# legacy backends), ipset (fallback when nfnetlink is unavailable), conntrack (stale UDP
# entries) and kmod (`kipvs prepare` loads ip_vs). See the DaemonSet for the privileges:
# a privileged init container runs `kipvs prepare`; `kipvs run` keeps only NET_ADMIN and
# NET_RAW.
FROM rust:1-bookworm AS build
ARG KIPVS_GIT_COMMIT=
WORKDIR /src
COPY . .
RUN KIPVS_GIT_COMMIT="$KIPVS_GIT_COMMIT" CARGO_PROFILE_RELEASE_STRIP=true \
    cargo build --release --locked -p kipvs \
 && /src/target/release/kipvs version

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ipset kmod conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kipvs /usr/local/bin/kipvs
COPY LICENSE /usr/share/doc/kipvs/LICENSE
ENTRYPOINT ["/usr/local/bin/kipvs"]
CMD ["run", "--config", "/var/lib/kube-proxy/config.conf"]
