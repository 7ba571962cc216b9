#!/usr/bin/env bash
# Runs kipvs' kernel tests against the running kernel, one process per test.
#
#   kernel-tests.sh RESULTS_DIR TEST_BINARY...
#
# Used directly on a host whose kernel has IPVS, and inside the test VM (tests/vm/guest-init
# runs it under chroot). Each test binary is an integration-test target named `kernel*`
# whose tests are all #[ignore]d: it is run with `--ignored --exact NAME`, so each test is
# its own process with its own timeout. A missing tool or kernel module is a failure:
# here, unlike on a laptop, nothing may be skipped.
#
# Writes RESULTS_DIR/summary ("passed N failed N skipped N"), RESULTS_DIR/results (one
# "PASS|FAIL name" line per test) and RESULTS_DIR/logs/<name>.log. Exit status 0 only
# when every test passed.
set -uo pipefail

results=$1
shift
per_test_timeout=${KIPVS_TEST_TIMEOUT:-300}
filter=${KIPVS_TEST_FILTER:-}
IFS=, read -ra filters <<<"$filter"
selected() { # "suite::name": whether any comma-separated filter is a substring of it
    local f
    for f in "${filters[@]}"; do [[ "$1" == *"$f"* ]] && return 0; done
    return 1
}
mkdir -p "$results/logs"
: >"$results/results"
passed=0
failed=0

record() { # PASS|FAIL name [reason]
    echo "$1 $2${3:+ ($3)}" >>"$results/results"
    echo "$1 $2${3:+ ($3)}"
    if [ "$1" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}

# Preflight: the tools and modules the suite relies on. Each missing one is a failure
# with its name, so a broken VM image can never look like a green run.
for tool in ip ipvsadm ipset iptables iptables-save ip6tables modprobe; do
    command -v "$tool" >/dev/null 2>&1 || record FAIL "preflight::tool::$tool" "not installed"
done
for module in ip_vs dummy veth ip_set; do
    modprobe "$module" >"$results/logs/modprobe-$module.log" 2>&1 ||
        record FAIL "preflight::module::$module" "$(tr '\n' ' ' <"$results/logs/modprobe-$module.log")"
done

# The node's conntrack limit, as `kipvs prepare` sets it in the host's network namespace
# with kube-proxy's defaults: max(32768 x CPUs, 131072), and the hash table at least a
# quarter of it. Only the initial namespace may change either, and the tests run kipvs
# in other namespaces, where (as kube-proxy does) it stops when the limit differs.
cpus=0
IFS=, read -ra cpu_ranges </sys/devices/system/cpu/online
for range in "${cpu_ranges[@]}"; do
    if [[ "$range" == *-* ]]; then cpus=$((cpus + ${range#*-} - ${range%-*} + 1)); else cpus=$((cpus + 1)); fi
done
conntrack_max=$((32768 * cpus))
[ "$conntrack_max" -lt 131072 ] && conntrack_max=131072
if modprobe nf_conntrack >"$results/logs/conntrack.log" 2>&1 &&
    echo "$conntrack_max" >/proc/sys/net/netfilter/nf_conntrack_max 2>>"$results/logs/conntrack.log"; then
    hashsize=/sys/module/nf_conntrack/parameters/hashsize
    if [ "$(cat "$hashsize")" -lt $((conntrack_max / 4)) ]; then
        echo $((conntrack_max / 4)) >"$hashsize" 2>>"$results/logs/conntrack.log" ||
            record FAIL "preflight::conntrack::hashsize" "$(tr '\n' ' ' <"$results/logs/conntrack.log")"
    fi
else
    record FAIL "preflight::conntrack::nf_conntrack_max" "$(tr '\n' ' ' <"$results/logs/conntrack.log")"
fi

for bin in "$@"; do
    suite=$(basename "$bin" | sed 's/-[0-9a-f]*$//')
    if ! list=$("$bin" --list --ignored --format terse 2>&1); then
        record FAIL "$suite" "cannot list tests: $list"
        continue
    fi
    while IFS= read -r line; do
        case "$line" in *": test") ;; *) continue ;; esac
        name=${line%: test}
        if [ -n "$filter" ] && ! selected "$suite::$name"; then continue; fi
        log="$results/logs/$suite::$name.log"
        start=$(date +%s)
        timeout --kill-after=10 "$per_test_timeout" \
            "$bin" --ignored --exact "$name" --test-threads=1 --nocapture >"$log" 2>&1
        rc=$?
        took=$(($(date +%s) - start))
        if [ $rc -eq 0 ] && grep -q "test result: ok. 1 passed" "$log"; then
            record PASS "$suite::$name" "${took}s"
        elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
            record FAIL "$suite::$name" "timed out after ${per_test_timeout}s"
            tail -n 20 "$log" | sed 's/^/    /'
        else
            record FAIL "$suite::$name" "exit $rc"
            tail -n 30 "$log" | sed 's/^/    /'
        fi
    done <<<"$list"
done

echo "passed $passed failed $failed skipped 0" >"$results/summary"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
