#!/usr/bin/env bash
# Actors on other hosts, on one machine: four network namespaces stand for four hosts on one
# bridge, each with its own address and host name: Redis (10.77.0.1), the learner (10.77.0.2)
# and two actor hosts (10.77.0.3, 10.77.0.4). The learner trains configs/tool_calc.toml (shortened)
# with no actor of its own; one `asymre actor` process on each actor host joins the run through
# Redis. Prints what each host said and the run's result. Needs root (ip netns); cleans up after
# itself. ASYMRE=path runs that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "multihost.sh: needs root for network namespaces" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "multihost.sh: redis-server is missing (scripts/setup.sh)" >&2; exit 1; }
. scripts/asymre_bin.sh
bin=$(realpath "$bin")
hosts=(redis learner actor-a actor-b)
out=$(mktemp -d /tmp/multihost.XXXXXX)
run=runs/multihost-$(date -u +%Y%m%d-%H%M%S)

pids=()
cleanup() {
    # Every process started here, by pid (a trap's `jobs` may list none), then the namespaces.
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.2
    for h in "${hosts[@]}"; do ip netns del "asy-$h" 2>/dev/null || true; done
    for i in "${!hosts[@]}"; do ip link del "asy-v$((i + 1))" 2>/dev/null || true; done
    ip link del asy-br 2>/dev/null || true
}
cleanup # what an interrupted earlier run left
trap cleanup EXIT

ip link add asy-br type bridge
ip link set asy-br up
for i in "${!hosts[@]}"; do
    h=${hosts[$i]}
    n=$((i + 1))
    ip netns add "asy-$h"
    ip link add "asy-v$n" type veth peer name eth0 netns "asy-$h"
    ip link set "asy-v$n" master asy-br up
    ip netns exec "asy-$h" ip addr add "10.77.0.$n/24" dev eth0
    ip netns exec "asy-$h" ip link set eth0 up
    ip netns exec "asy-$h" ip link set lo up
done
# Each host gets its own host name too (actors are named host/id in the learner's log).
on() {
    local h=$1
    shift
    # Only ever run in a subshell (`&` or a pipeline): `exec` makes the pid recorded in `pids`
    # the program's own.
    exec ip netns exec "asy-$h" unshare --uts sh -c 'hostname "$0"; exec "$@"' "$h" "$@"
}

on redis redis-server --bind 10.77.0.1 --port 6379 --save "" --appendonly no \
    --protected-mode no >"$out/redis.log" 2>&1 &
pids+=($!)
ip netns exec asy-learner bash -c \
    'for _ in $(seq 100); do (echo > /dev/tcp/10.77.0.1/6379) 2>/dev/null && exit 0; sleep 0.1; done; exit 1'
url=redis://10.77.0.1:6379/0
name=$(basename "$run")
on actor-a "$bin" actor --transport "$url" --run "$name" >"$out/actor-a.log" 2>&1 &
pids+=($!)
on actor-b "$bin" actor --transport "$url" --run "$name" >"$out/actor-b.log" 2>&1 &
pids+=($!)
on learner "$bin" train --config configs/tool_calc.toml --out "$run" --transport "$url" \
    --set actor.threads=0 --set env.rounds=2 --set env.steps_per_round=100 \
    --set warmstart.steps=60 2>&1 | grep -v '^step ' | tee "$out/learner.log"
wait "${pids[1]}" "${pids[2]}" 2>/dev/null || true
for h in actor-a actor-b; do
    echo "--- $h"
    cat "$out/$h.log"
done
echo "--- rows with the actors heard from (actors) and alive (actors_alive):"
sed -nE 's/.*"step":([0-9]+),.*"actors":([0-9.]+),"actors_alive":([0-9.]+).*/  step \1: actors \2, alive \3/p' \
    "$run/metrics.jsonl" | awk 'NR % 5 == 1'
echo "run: $run; logs: $out"
