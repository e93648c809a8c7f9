#!/bin/sh
# A `command` capacity provider (worker_provider_command) that adds simulated hosts: each
# worker is an execute node in a network namespace of its own, joining the pool over its
# bridge with an execute-node token, as a node on another machine would (docs/operations.md,
# "Execute nodes on other machines"). Root only; the pool needs pool_bridge = true.
#
#   provision   stdin {"params": {"cpus": 2, "runtimes": ["bash"], "name": "n1"}, "collector": ...}
#               stdout {"name": "<the worker's name in /workers>"}
#   retire      stdin {"name": "<worker>"}: drains it (running jobs finish, at most
#               NETNS_NODE_DRAIN_SECONDS, default 600), then removes the host.
#
# It runs `modaclouds-batch pool ...` with the gateway's environment (MODACLOUDS_BATCH_POOL_DIR,
# ..._COLLECTOR_PORT, ..._POOL_BRIDGE say which pool); NETNS_NODE_CLI overrides the command.
# On a real second machine the same steps are: copy the token there, point COLLECTOR_HOST at
# the pool, start condor_master (see docs/operations.md).
set -eu
cli=${NETNS_NODE_CLI:-modaclouds-batch}
action=${1:-}
request=$(cat)

field() {  # field PYTHON-EXPRESSION: evaluated over the request document `d`
    printf '%s' "$request" | python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"
}

case "$action" in
provision)
    name=$(field 'd.get("params", {}).get("name") or ""')
    [ -n "$name" ] || name="n$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
    cpus=$(field 'int(d.get("params", {}).get("cpus", 2))')
    runtimes=$(field '" ".join("--runtime=" + r for r in d.get("params", {}).get("runtimes", ["bash", "python3"]))')
    token=$(mktemp)
    trap 'rm -f "$token"' EXIT
    # The node's own token: it may advertise a startd and a master and read, nothing more.
    $cli pool token --execute-node > "$token"
    # shellcheck disable=SC2086  # one word per --runtime=NAME
    $cli pool host add "$name" --cpus "$cpus" $runtimes --token-file "$token" >&2
    # Its slots are slot1@<name>, so the worker is named as the host.
    printf '{"name": "%s"}\n' "$name"
    ;;
retire)
    name=$(field 'd["name"]')
    $cli pool host remove "$name" --drain "${NETNS_NODE_DRAIN_SECONDS:-600}" >&2
    printf '{}\n'
    ;;
*)
    echo "usage: $0 provision|retire < request.json" >&2
    exit 2
    ;;
esac
