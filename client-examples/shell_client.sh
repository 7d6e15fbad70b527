#!/usr/bin/env bash
# An omemod client in bash, on `omemod call` and jq (and socat for `events`).
#
# usage: shell_client.sh [--socket PATH] [--account JID] COMMAND [ARGS]
#
#   status                                   the daemon, its accounts, and ours
#   publish-info                             what to publish to PEP, for both namespaces
#   encrypt --to JID [--to JID…] --body TEXT [--namespace NS] [--room ROOM]
#                                            one <encrypted> element per line
#   decrypt --from JID --xml FILE|- [--to JID] [--group-chat]   the body (sender on stderr)
#   events [--count N]                       subscribe and print events as they come
#
# omemod is $OMEMOD, else `omemod` on PATH, else next to this script, else the repository's
# target/{release,debug}/omemod (the newer one).
# Socket: --socket, else $OMEMOD_SOCKET, else $XDG_RUNTIME_DIR/omemod/omemod.sock, else
# /run/user/<uid>/omemod/omemod.sock when /run/user/<uid> exists, else
# /tmp/omemod-<uid>/omemod.sock (the same rule as `omemod serve`).
# Account: --account, else $OMEMOD_ACCOUNT, else the daemon's only account; never created here
# (`omemod init --jid you@example.org` does that).
# Exit codes: 0 success, 1 the daemon answered with an error, 2 usage error or no daemon.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
namespaces=(urn:xmpp:omemo:2 eu.siacs.conversations.axolotl)

die() { echo "$*" >&2; exit 2; }
# --help prints the comment at the top of this file.
usage() { sed -n '2,/^[^#]/ s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0; }

find_omemod() {
  if [ -n "${OMEMOD:-}" ]; then echo "$OMEMOD"; return; fi
  if command -v omemod >/dev/null; then command -v omemod; return; fi
  if [ -x "$here/omemod" ]; then echo "$here/omemod"; return; fi
  local rel=$here/../target/release/omemod dbg=$here/../target/debug/omemod
  if [ -x "$rel" ] && { [ ! -x "$dbg" ] || [ "$rel" -nt "$dbg" ]; }; then echo "$rel"; return; fi
  if [ -x "$dbg" ]; then echo "$dbg"; return; fi
  die "omemod not found: put it on PATH, or set OMEMOD=/path/to/omemod, or build it (cargo build -p omemod)"
}

default_socket() {
  if [ -n "${OMEMOD_SOCKET:-}" ]; then echo "$OMEMOD_SOCKET"
  elif [ -n "${XDG_RUNTIME_DIR:-}" ]; then echo "$XDG_RUNTIME_DIR/omemod/omemod.sock"
  elif [ -d "/run/user/$(id -u)" ]; then echo "/run/user/$(id -u)/omemod/omemod.sock"
  else echo "/tmp/omemod-$(id -u)/omemod.sock"; fi
}

# One line per event or action. New omemod versions name events after the actions; older ones
# use bundle_changed / heartbeat_due. Unknown types are shown, never fatal.
describe=$(cat <<'JQ'
def describe:
  (.jid // .peer) as $peer |
  if .type == "publish_bundle" or .type == "bundle_changed" then
    "\(.type): publish our \(.namespace) bundle (bundle.get)"
  elif .type == "publish_devicelist" then
    "\(.type): publish our \(.namespace) device list (devicelist.get)"
  elif .type == "send_heartbeat" or .type == "heartbeat_due" then
    "\(.type): send an empty message to \($peer) device \(.device_id) (heartbeat)"
  elif .type == "fetch_bundle" then
    "\(.type): fetch \($peer)'s bundle from \(.node) item \(.item_id), then bundle.update"
  elif .type == "fetch_devicelist" then
    "\(.type): fetch \($peer)'s device list from \(.node), then devicelist.update"
  elif .type == "devicelist_changed" then
    "\(.type): \($peer)'s \(.namespace) devices are now \(.device_ids)"
  elif .type == "trust_decision_needed" or .type == "identity_changed" then
    "\(.type): \($peer) device \(.device_id) has key \(.fingerprint): decide with trust.set"
  elif .type == "events_lost" then
    "\(.type): \(.missed) events were lost: re-read the state you need"
  else "\(.type): \(tojson)" end;
JQ
)

# rpc METHOD PARAMS_JSON: sets `result`. On an error answer it sets err_kind (data.kind, read
# from `omemod call`'s "(kind, code N)" line) and err_text, and returns 1. Not to be called in a
# subshell ($(…) or a pipe), which would lose these. Params go through stdin, so that bodies do
# not show up in `ps`.
result='' err_kind='' err_text=''
errfile=$(mktemp)
trap 'rm -f "$errfile"' EXIT
rpc() {
  local rc=0
  result=$("$omemod" --socket "$sock" call "$1" - <<<"$2" 2>"$errfile") || rc=$?
  [ "$rc" -eq 0 ] && return 0
  err_text=$(cat "$errfile")
  [ "$rc" -eq 1 ] || die "$err_text"
  err_kind=$(sed -n '1s/.*(\([a-z_]*\), code -\{0,1\}[0-9]*)$/\1/p' "$errfile")
  return 1
}

# A friendly message for the errors a user can act on, chosen by data.kind.
explain() {
  case $err_kind in
    account_required)
      local jids=''
      if rpc account.list '{}'; then jids=$(jq -r '[.[].jid] | join(", ")' <<<"$result"); fi
      if [ -z "$jids" ]; then
        echo "error: omemod has no account yet: create one with \`omemod init --jid you@example.org\`"
      else
        echo "error: omemod has several accounts ($jids): choose one with --account JID or OMEMOD_ACCOUNT=JID"
      fi ;;
    unknown_account) echo "error: omemod has no account $account: see \`omemod call account.list\`" ;;
    duplicate_message) echo "error: this message was already decrypted (a replay or a second delivery)" ;;
    not_for_this_device) echo "error: this message is not encrypted for our device" ;;
    no_session|broken_session)
      echo "error: no usable session with the sender: ask them to resend, or call session.replace" ;;
    distrusted) echo "error: the sender's key is distrusted: the message was refused" ;;
    *) echo "error: $err_text" ;;
  esac >&2
  exit 1
}

# with_account JSON: adds "account" when one was chosen.
with_account() { jq -c --arg a "$account" 'if $a != "" then . + {account: $a} else . end' <<<"$1"; }

cmd_status() {
  rpc status '{}' || explain
  jq -r '"omemod \(.version) (pid \(.pid)) on \(.socket)"' <<<"$result"
  rpc account.list '{}' || explain
  jq -r '.[] | "account \(.jid) device \(.device_id)"' <<<"$result"
  rpc fingerprint.get "$(with_account '{}')" || explain
  jq -r '"using \(.jid) device \(.device_id) fingerprint \(.fingerprint)"' <<<"$result"
}

cmd_publish_info() {
  # Before publishing a device list, fetch the one on the server and hand it to
  # devicelist.update (jid = our own JID), or publishing ours drops our other devices.
  local ns what
  for ns in "${namespaces[@]}"; do
    for what in devicelist bundle; do
      rpc "$what.get" "$(with_account "$(jq -nc --arg ns "$ns" '{namespace: $ns}')")" || explain
      jq -r --arg w "$what" '"\(.namespace) \($w): node \(.node) item \(.item_id) options \(
        .publish_options | to_entries | map("\(.key)=\(.value)") | join(", "))\n  \(.xml)"' \
        <<<"$result"
    done
  done
}

cmd_encrypt() {
  local to=() body='' ns='' room='' r
  while [ $# -gt 0 ]; do
    case $1 in
      --to) to+=("${2:?}"); shift 2 ;;
      --body) body=${2?}; shift 2 ;;
      --namespace) ns=${2:?}; shift 2 ;;
      --room) room=${2:?}; shift 2 ;;
      *) die "encrypt: unknown option $1" ;;
    esac
  done
  [ ${#to[@]} -gt 0 ] || die "encrypt needs --to JID --body TEXT"
  # A group chat (--room): `to` lists the members' real JIDs, the SCE envelope names the room.
  rpc encrypt "$(with_account "$(jq -nc --arg body "$body" --arg ns "$ns" --arg room "$room" \
    '{to: $ARGS.positional, body: $body} + (if $ns != "" then {namespaces: [$ns]} else {} end)
     + (if $room != "" then {sce_to: $room} else {} end)' --args "${to[@]}")")" || explain
  r=$result
  jq -r '.devices[] | "\(.jid) device \(.device_id) [\(.namespace)]: \(.status)" +
    if .reason then " (\(.reason))" else "" end' <<<"$r" >&2
  jq -r "$describe"' .actions[] | "then: " + describe' <<<"$r" >&2
  if [ "$(jq '.messages | length' <<<"$r")" -eq 0 ]; then
    echo "nothing to send: no device of the contact could be encrypted for" >&2
    exit 1
  fi
  # Each element goes into a <message type='chat' to=JID>, next to a fallback <body>, an EME
  # hint (urn:xmpp:eme:0) and <store xmlns='urn:xmpp:hints'/>: see docs/clients.md.
  jq -r '.messages[].xml' <<<"$r"
}

cmd_decrypt() {
  local from='' file='' to='' group=false xml p r env
  while [ $# -gt 0 ]; do
    case $1 in
      --from) from=${2:?}; shift 2 ;;
      --xml) file=${2:?}; shift 2 ;;
      --to) to=${2:?}; shift 2 ;;
      --group-chat) group=true; shift ;;
      *) die "decrypt: unknown option $1" ;;
    esac
  done
  [ -n "$from" ] && [ -n "$file" ] || die "decrypt needs --from JID --xml FILE|-"
  if [ "$file" = - ]; then xml=$(cat); else xml=$(<"$file"); fi
  # `to` is where the stanza was addressed (us, or the room); the daemon compares it with the
  # OMEMO 2 envelope so that a message for someone else cannot be replayed to us.
  if [ -z "$to" ]; then
    to=$account
    if [ -z "$to" ]; then
      rpc fingerprint.get '{}' || explain
      to=$(jq -r .jid <<<"$result")
    fi
  fi
  p=$(with_account "$(jq -nc --arg from "$from" --arg xml "$xml" --arg to "$to" \
    --argjson g "$group" '{from: $from, xml: $xml, to: $to, group_chat: $g}')")
  if ! rpc decrypt "$p"; then
    [ "$err_kind" = invalid_params ] || explain
    # An omemod without the `to` param: decrypt without it and check the envelope here.
    rpc decrypt "$(jq -c 'del(.to, .group_chat)' <<<"$p")" || explain
    r=$result
    env=$(jq -c '.envelope // empty' <<<"$r")
    if [ -n "$env" ] && ! jq -e --arg to "$to" --arg from "$from" \
      '.to == $to and .from == $from' <<<"$env" >/dev/null; then
      echo "refused: the envelope says $(jq -r '"from \(.from) to \(.to)"' <<<"$env"), the stanza from $from to $to" >&2
      exit 1
    fi
  else
    r=$result
  fi
  # redelivered: seen before (e.g. from the archive): show it, but do not notify again.
  jq -r '"from \(.sender.jid) device \(.sender.device_id) [\(.namespace)] trust \(.sender.trust)" +
    (if .key_exchange then " key exchange" else "" end) +
    (if .redelivered then " redelivered (first at \(.first_decrypted_at))" else "" end)' <<<"$r" >&2
  jq -r "$describe"' .actions[] | "then: " + describe' <<<"$r" >&2
  if [ "$(jq .empty <<<"$r")" = true ]; then
    echo "(empty message: nothing to show)" >&2
  else
    jq -r '.body // ""' <<<"$r"
  fi
}

# `omemod call` makes one request per connection, so events need a connection of our own.
cmd_events() {
  local count=-1 seen=0 line
  while [ $# -gt 0 ]; do
    case $1 in
      --count) count=${2:?}; shift 2 ;;
      *) die "events: unknown option $1" ;;
    esac
  done
  [[ $count =~ ^(-1|[0-9]+)$ ]] || die "events: --count needs a number"
  command -v socat >/dev/null || die "events needs socat (apt-get install socat)"
  coproc CONN { exec socat - "UNIX-CONNECT:$sock"; }
  # Bash forgets these when socat ends: keep copies.
  local in=${CONN[0]} out=${CONN[1]} pid=$CONN_PID
  echo '{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{}}' >&"$out"
  while [ "$seen" -ne "$count" ] && IFS= read -r line <&"$in"; do
    if jq -e '.id == 1' <<<"$line" >/dev/null; then
      if jq -e '.error' <<<"$line" >/dev/null; then
        echo "error: $(jq -r '.error.message' <<<"$line")" >&2
        exit 1
      fi
      jq -r '"subscribed (\(.result.subscription)); waiting for events"' <<<"$line"
    elif jq -e '.method == "event"' <<<"$line" >/dev/null; then
      # in_answer: the call that caused it got it as an action and does it; just note it.
      jq -r "$describe"' .params.event | describe + if .in_answer then " (the caller does it)" else "" end' <<<"$line"
      seen=$((seen + 1))
    fi
  done
  kill "$pid" 2>/dev/null || true
  [ "$seen" -eq "$count" ] || die "omemod closed the connection"
}

sock='' account=${OMEMOD_ACCOUNT:-}
while [ $# -gt 0 ]; do
  case $1 in
    --socket) sock=${2:?}; shift 2 ;;
    --account) account=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    -*) die "unknown option $1 (--help: usage)" ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || die "usage: shell_client.sh [--socket PATH] [--account JID] status|publish-info|encrypt|decrypt|events … (--help: all of it)"
case ${2:-} in -h|--help) usage ;; esac
command -v jq >/dev/null || die "this example needs jq (apt-get install jq)"
omemod=$(find_omemod)
sock=${sock:-$(default_socket)}
# Refuse a socket another local user could have put there: they would read every plaintext we
# send. The socket and its directory must be ours and not symlinks, and the directory must not be
# writable by others.
dir=$(dirname "$sock")
[ -S "$sock" ] || die "cannot use omemod's socket $sock: no socket there (is \`omemod serve\` running?)"
for f in "$dir" "$sock"; do
  [ ! -L "$f" ] || die "cannot use omemod's socket $sock: $f is a symbolic link"
  [ -O "$f" ] || die "cannot use omemod's socket $sock: $f does not belong to us"
done
case $(stat -c %A "$dir") in
  ?????w????|????????w?) die "cannot use omemod's socket $sock: $dir is writable by other users" ;;
esac

cmd=$1
shift
case $cmd in
  status) cmd_status "$@" ;;
  publish-info) cmd_publish_info "$@" ;;
  encrypt) cmd_encrypt "$@" ;;
  decrypt) cmd_decrypt "$@" ;;
  events) cmd_events "$@" ;;
  *) die "unknown command $cmd" ;;
esac
