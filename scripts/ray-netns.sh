#!/usr/bin/env bash
# A two-node Ray cluster on one Linux machine: two network namespaces, two addresses, like two hosts.
#   sudo bash scripts/ray-netns.sh up     # head 10.77.0.2 (party 0's host), worker 10.77.0.3 (party 1's)
#   sudo bash scripts/ray-netns.sh down
# Needs root (ip netns) and Ray in the project's environment (scripts/in-env.sh installs it).
# Each node gets one CPU and the label of the MPC party it hosts (secure_infer_party_<rank>).
# Run a client inside the head's namespace: ip netns exec si-a .venv/bin/python ...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ray="${RAY:-$root/.venv/bin/ray}"
cpus="${RAY_NODE_CPUS:-1}"

up() {
    ip link add si-br type bridge
    ip addr add 10.77.0.1/24 dev si-br
    ip link set si-br up
    local i=2
    for n in a b; do
        ip netns add "si-$n"
        ip link add "si-$n-h" type veth peer name eth0 netns "si-$n"
        ip link set "si-$n-h" master si-br up
        ip netns exec "si-$n" ip addr add "10.77.0.$i/24" dev eth0
        ip netns exec "si-$n" ip link set eth0 up
        ip netns exec "si-$n" ip link set lo up
        ip netns exec "si-$n" ip route add default via 10.77.0.1
        i=$((i + 1))
    done
    ip netns exec si-a "$ray" start --head --node-ip-address 10.77.0.2 --port 6379 --num-cpus "$cpus" \
        --resources '{"secure_infer_party_0": 8}' --include-dashboard=false --disable-usage-stats >/dev/null
    ip netns exec si-b "$ray" start --address 10.77.0.2:6379 --node-ip-address 10.77.0.3 --num-cpus "$cpus" \
        --resources '{"secure_infer_party_1": 8}' --disable-usage-stats >/dev/null
    echo "ray cluster up: head 10.77.0.2:6379 (namespace si-a), worker 10.77.0.3 (namespace si-b)"
}

down() {
    for n in b a; do
        if ip netns list | grep -q "^si-$n"; then
            ip netns exec "si-$n" "$ray" stop --force >/dev/null 2>&1 || true
            ip netns del "si-$n"
        fi
    done
    ip link del si-br 2>/dev/null || true
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: bash scripts/ray-netns.sh up|down" >&2; exit 2 ;;
esac
