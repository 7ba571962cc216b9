#!/usr/bin/env bash
# The test VM: Debian's distro kernel (it has IPVS, dummy, veth, ipset and nftables)
# booted under qemu with the host's root mounted read-only over 9p.
#
#   vm.sh run JOB_SCRIPT RESULTS_DIR [DIR...]
#                                      boot once, run JOB_SCRIPT as root inside, power off;
#                                      each DIR is visible read-only at its own path even
#                                      where the guest's /tmp or /run would hide it
#   vm.sh check                        say whether a VM can run here (exit 0) or why not
#
# Network: none (`-nic none`) unless KIPVS_VM_APISERVER=127.0.0.1:PORT is set. Then the
# guest gets one virtio NIC (eth0, 10.0.2.15/24) on qemu's user network with restrict=on,
# whose only way out is a guestfwd of 10.0.2.100:PORT to the host's 127.0.0.1:PORT (socat
# on the host relays each connection): the test API server of tests/peer/cluster, and
# nothing else. guest-init serves it inside the guest on 127.0.0.1:6443 and on the unix
# socket /run/kipvs-apiserver.sock (tests/peer/apiserver-forward relays it into other
# network namespaces). The KIPVS_PEER_* variables of `tests/peer/cluster env` are passed to
# the job, and the directories KIPVS_PEER_DIR and KIPVS_PEER_BIN are shared like DIRs.
#
# JOB_SCRIPT is copied into RESULTS_DIR (a writable 9p share, /tmp/kipvs-results inside)
# and run with bash under chroot of the host's root. Exit status: the job's own; 125 when
# the VM could not boot, crashed, hung past KIPVS_VM_TIMEOUT seconds or did not report.
#
# TCG is the default: KVM hangs early in boot on some machines (set KIPVS_VM_ACCEL=kvm to
# use it where it works). The initramfs is cached under target/kipvs-vm/, never in git.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${CARGO_TARGET_DIR:-$repo/target}/kipvs-vm
vm_timeout=${KIPVS_VM_TIMEOUT:-3000}

die() { echo "vm: $*" >&2; exit 125; }

# The newest installed kernel whose modules include IPVS.
kernel_version() {
    local v best=""
    for img in /boot/vmlinuz-*; do
        [ -e "$img" ] || continue
        v=${img#/boot/vmlinuz-}
        [ -d "/lib/modules/$v/kernel/net/netfilter/ipvs" ] && best=$v
    done
    [ -n "$best" ] || return 1
    echo "$best"
}

check() {
    command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 is not installed"; return 1; }
    [ -x /bin/busybox ] || { echo "busybox-static is not installed"; return 1; }
    command -v cpio >/dev/null || { echo "cpio is not installed"; return 1; }
    kernel_version >/dev/null || { echo "no kernel with IPVS modules under /boot (install linux-image-amd64)"; return 1; }
    [ -r "/boot/vmlinuz-$(kernel_version)" ] || { echo "/boot/vmlinuz-$(kernel_version) is not readable"; return 1; }
}

# Builds (or reuses) the initramfs for kernel $1 and prints its path.
initramfs() {
    local kver=$1 key out root m path
    key=$(cat "$here/guest-init" "$here/vm.sh" /bin/busybox | sha256sum | cut -c1-16)
    out="$cache/initramfs-$kver-$key.cpio.gz"
    if [ -s "$out" ]; then echo "$out"; return; fi
    mkdir -p "$cache"
    root=$(mktemp -d "$cache/root.XXXXXX")
    mkdir -p "$root"/{bin,dev,proc,sys,modules}
    cp /bin/busybox "$root/bin/busybox"
    cp "$here/guest-init" "$root/init"
    chmod 755 "$root/init"
    printf '#!/bin/busybox sh\nexec /bin/busybox chroot /host /sbin/modprobe "$@"\n' >"$root/modprobe-host"
    chmod 755 "$root/modprobe-host"
    : >"$root/modules/order"
    for m in virtio_pci 9pnet_virtio 9p; do
        while read -r verb path _; do
            [ "$verb" = insmod ] || continue
            grep -qx "$(basename "$path")" "$root/modules/order" && continue
            case "$path" in
                *.ko) cp "$path" "$root/modules/" ;;
                *.ko.xz) xz -dc "$path" >"$root/modules/$(basename "$path" .xz)"; path=${path%.xz} ;;
                *.ko.zst) zstd -qdc "$path" >"$root/modules/$(basename "$path" .zst)"; path=${path%.zst} ;;
                *) die "unknown module format: $path" ;;
            esac
            basename "$path" >>"$root/modules/order"
        done < <(modprobe -S "$kver" --show-depends "$m")
    done
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$root"
    echo "$out"
}

run() {
    local job=$1 results=$2 kver initrd accel status dir n=0
    shift 2
    local shares=() net=(-nic none) var
    why=$(check) || die "$why"
    kver=$(kernel_version)
    initrd=$(initramfs "$kver")
    mkdir -p "$results"
    rm -f "$results/exit-status" "$results/network" "$results/env"
    cp "$job" "$results/job.sh"
    : >"$results/shares"
    if [ -n "${KIPVS_VM_APISERVER:-}" ]; then
        [[ $KIPVS_VM_APISERVER =~ ^127\.0\.0\.1:([0-9]+)$ ]] ||
            die "KIPVS_VM_APISERVER must be 127.0.0.1:PORT, not $KIPVS_VM_APISERVER"
        local port=${BASH_REMATCH[1]}
        command -v socat >/dev/null || die "socat is not installed (it relays the forwarded port)"
        # restrict=on: the guest reaches nothing outside but the guestfwd; no IPv6, no DNS use.
        net=(-netdev "user,id=net0,restrict=on,ipv6=off,net=10.0.2.0/24,guestfwd=tcp:10.0.2.100:$port-cmd:socat STDIO TCP:127.0.0.1:$port"
            -device virtio-net-pci,netdev=net0)
        echo "10.0.2.100 $port" >"$results/network"
        # The peer variables, for the job's environment (guest-init passes them on).
        : >"$results/env"
        for var in $(compgen -e | grep '^KIPVS_PEER_' || true); do
            [[ ${!var} =~ ^[^[:space:]]*$ ]] || die "$var contains white space"
            echo "$var=${!var}" >>"$results/env"
        done
        for dir in "${KIPVS_PEER_DIR:-}" "${KIPVS_PEER_BIN:-}"; do
            [ -n "$dir" ] && set -- "$@" "$dir"
        done
    fi
    for dir in "$@"; do
        dir=$(cd "$dir" && pwd -P)
        n=$((n + 1))
        echo "share$n $dir" >>"$results/shares"
        shares+=(-virtfs "local,path=$dir,mount_tag=share$n,security_model=none,readonly=on,multidevs=remap")
    done
    accel=${KIPVS_VM_ACCEL:-tcg}
    local cpu=max
    [ "$accel" = kvm ] && cpu=host
    echo "vm: booting $kver ($accel, $(nproc) cpus, timeout ${vm_timeout}s)"
    set +e
    timeout --kill-after=10 "$vm_timeout" qemu-system-x86_64 \
        -accel "$accel" -cpu "$cpu" -smp "$(nproc)" -m 3072 \
        -display none -monitor none -serial "file:$results/console.log" \
        -no-reboot \
        -kernel "/boot/vmlinuz-$kver" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 oops=panic rdinit=/init loglevel=4 net.ifnames=0" \
        -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$results,mount_tag=results,security_model=none,multidevs=remap" \
        "${shares[@]}" "${net[@]}"
    status=$?
    set -e
    if grep -q "Kernel panic" "$results/console.log" 2>/dev/null; then
        echo "vm: the kernel panicked; the console's last lines:" >&2
        tail -n 40 "$results/console.log" >&2
        exit 125
    fi
    if [ $status -eq 124 ] || [ $status -eq 137 ]; then
        echo "vm: no answer within ${vm_timeout}s (hang); the console's last lines:" >&2
        tail -n 40 "$results/console.log" >&2
        exit 125
    fi
    if [ ! -s "$results/exit-status" ]; then
        echo "vm: qemu exited ($status) without the job reporting; the console's last lines:" >&2
        tail -n 40 "$results/console.log" >&2
        exit 125
    fi
    exit "$(cat "$results/exit-status")"
}

case "${1:-}" in
    run) [ $# -ge 3 ] || die "usage: vm.sh run JOB_SCRIPT RESULTS_DIR [DIR...]"; shift; run "$@" ;;
    check) check ;;
    *) die "usage: vm.sh run JOB_SCRIPT RESULTS_DIR [DIR...] | vm.sh check" ;;
esac
