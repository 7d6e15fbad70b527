#!/usr/bin/env bash
# omemod from a shell: `omemod call` sends one request and prints the result as JSON.
# Usage: shell_client.sh [SOCKET]
set -euo pipefail
omemod=${OMEMOD:-omemod}
sock=()
if [ $# -gt 0 ]; then sock=(--socket "$1"); fi
if [ "$("$omemod" "${sock[@]}" call account.list)" = "[]" ]; then
  "$omemod" "${sock[@]}" init --jid me@example.org
fi
"$omemod" "${sock[@]}" fingerprint
# Params can come from stdin, e.g. from jq:
echo '{"namespace": "eu.siacs.conversations.axolotl"}' | "$omemod" "${sock[@]}" call bundle.get -
