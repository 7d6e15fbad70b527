#!/usr/bin/env node
// An omemod client in JavaScript (Node.js 18+, no dependencies). HELP below is its manual
// (`node node_client.mjs --help`).
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import { parseArgs } from "node:util";

const NAMESPACES = ["urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl"];

const HELP = `An omemod client in JavaScript (Node.js 18+, no dependencies).

usage: node node_client.mjs [--socket PATH] [--account JID] COMMAND [ARGS]

  status                                   the daemon, its accounts, and ours
  publish-info                             what to publish to PEP, for both namespaces
  encrypt --to JID [--to JID…] --body TEXT [--namespace NS] [--room ROOM]
                                           one <encrypted> element per line
  decrypt --from JID --xml FILE|- [--to JID] [--group-chat]   the body (sender on stderr)
  events [--count N]                       subscribe and print events as they come

Socket: --socket, else $OMEMOD_SOCKET, else $XDG_RUNTIME_DIR/omemod/omemod.sock, else
/run/user/<uid>/omemod/omemod.sock when /run/user/<uid> exists, else
/tmp/omemod-<uid>/omemod.sock (the same rule as \`omemod serve\`).
Account: --account, else $OMEMOD_ACCOUNT, else the daemon's only account; this client never
creates one (\`omemod init --jid you@example.org\` does).
Exit codes: 0 success, 1 the daemon answered with an error, 2 usage error or no daemon.
`;

// An error answer. Programs switch on `kind` (stable); `message` is for people.
class RpcError extends Error {
  constructor(method, error) {
    const data = error.data ?? {};
    super(`${method}: ${error.message} (${data.kind})`);
    this.kind = data.kind ?? "unknown";
    this.data = data;
  }
}

function defaultSocket() {
  if (process.env.OMEMOD_SOCKET) return process.env.OMEMOD_SOCKET;
  let runtime = process.env.XDG_RUNTIME_DIR;
  const runUser = `/run/user/${process.getuid()}`;
  if (!runtime && fs.existsSync(runUser)) runtime = runUser;
  if (runtime) return path.join(runtime, "omemod", "omemod.sock");
  return `/tmp/omemod-${process.getuid()}/omemod.sock`;
}

// Refuse a socket another local user could have put there: they would read every plaintext we
// send. The socket and its directory must be ours and not symlinks, and the directory must not be
// writable by others (so nobody can swap the socket after this check). Node cannot read the
// peer's uid (SO_PEERCRED); the daemon checks ours.
function checkOwner(socketPath) {
  const dir = path.dirname(path.resolve(socketPath));
  for (const p of [dir, socketPath]) {
    const st = fs.lstatSync(p);
    if (st.isSymbolicLink()) throw new Error(`${p} is a symbolic link`);
    if (st.uid !== process.getuid()) throw new Error(`${p} belongs to uid ${st.uid}, not to us`);
  }
  if (fs.lstatSync(dir).mode & 0o022) throw new Error(`${dir} is writable by other users`);
  if (!fs.lstatSync(socketPath).isSocket()) throw new Error(`${socketPath} is not a socket`);
}

// One connection. Requests run concurrently on it; answers come back in any order and are
// matched by id. Events are handed to `onEvent`.
class Omemod {
  static async connect(socketPath) {
    checkOwner(socketPath);
    const conn = net.createConnection(socketPath);
    await new Promise((resolve, reject) => conn.once("connect", resolve).once("error", reject));
    return new Omemod(conn);
  }

  constructor(conn) {
    this.conn = conn;
    this.pending = new Map();
    this.nextId = 1;
    this.onEvent = () => {};
    readline.createInterface({ input: conn }).on("line", (line) => {
      const msg = JSON.parse(line);
      if (msg.method === "event") return this.onEvent(msg.params.event);
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.error) p.reject(new RpcError(p.method, msg.error));
      else p.resolve(msg.result);
    });
    conn.on("close", () => {
      for (const p of this.pending.values()) p.reject(new Error("omemod closed the connection"));
      this.pending.clear();
    });
  }

  call(method, params = {}) {
    const id = this.nextId++;
    this.conn.write(JSON.stringify({ jsonrpc: "2.0", id, method, params }) + "\n");
    return new Promise((resolve, reject) => this.pending.set(id, { method, resolve, reject }));
  }

  close() {
    this.conn.end();
  }
}

// One line per event. New omemod versions name events after the actions; older ones use
// bundle_changed / heartbeat_due. Unknown types are shown, never fatal.
function describe(e) {
  const peer = e.jid ?? e.peer;
  switch (e.type) {
    case "publish_bundle":
    case "bundle_changed":
      return `${e.type}: publish our ${e.namespace} bundle (bundle.get)`;
    case "publish_devicelist":
      return `${e.type}: publish our ${e.namespace} device list (devicelist.get)`;
    case "send_heartbeat":
    case "heartbeat_due":
      return `${e.type}: send an empty message to ${peer} device ${e.device_id} (heartbeat)`;
    case "fetch_bundle":
      return `${e.type}: fetch ${peer}'s bundle from ${e.node} item ${e.item_id}, then bundle.update`;
    case "fetch_devicelist":
      return `${e.type}: fetch ${peer}'s device list from ${e.node}, then devicelist.update`;
    case "devicelist_changed":
      return `${e.type}: ${peer}'s ${e.namespace} devices are now [${e.device_ids}]`;
    case "trust_decision_needed":
    case "identity_changed":
      return `${e.type}: ${peer} device ${e.device_id} has key ${e.fingerprint}: decide with trust.set`;
    case "events_lost":
      return `${e.type}: ${e.missed} events were lost: re-read the state you need`;
    default:
      return `${e.type}: ${JSON.stringify(e)}`;
  }
}

const showActions = (actions) => actions.forEach((a) => console.error(`then: ${describe(a)}`));

// A friendly message for the errors a user can act on, chosen by data.kind.
async function explain(d, err, account) {
  switch (err.kind) {
    case "account_required": {
      const jids = (await d.call("account.list").catch(() => [])).map((a) => a.jid);
      if (jids.length === 0) {
        return "omemod has no account yet: create one with `omemod init --jid you@example.org`";
      }
      return `omemod has several accounts (${jids.join(", ")}): choose one with --account JID or OMEMOD_ACCOUNT=JID`;
    }
    case "unknown_account":
      return `omemod has no account ${account}: see \`omemod call account.list\``;
    case "duplicate_message":
      return "this message was already decrypted (a replay or a second delivery)";
    case "not_for_this_device":
      return `this message is not encrypted for our device (it is for ${err.data.recipients})`;
    case "no_session":
    case "broken_session":
      return "no usable session with the sender: ask them to resend, or call session.replace";
    case "distrusted":
      return "the sender's key is distrusted: the message was refused";
    default:
      return err.message;
  }
}

async function run(d, account, cmd, opts) {
  const withAccount = (p) => (account ? { ...p, account } : p);
  switch (cmd) {
    case "status": {
      // Independent requests can be in flight together.
      const [s, accounts] = await Promise.all([d.call("status"), d.call("account.list")]);
      console.log(`omemod ${s.version} (pid ${s.pid}) on ${s.socket}`);
      for (const a of accounts) console.log(`account ${a.jid} device ${a.device_id}`);
      const me = await d.call("fingerprint.get", withAccount({}));
      console.log(`using ${me.jid} device ${me.device_id} fingerprint ${me.fingerprint}`);
      return 0;
    }
    case "publish-info":
      // Before publishing a device list, fetch the one on the server and hand it to
      // devicelist.update (jid = our own JID), or publishing ours drops our other devices.
      for (const ns of NAMESPACES) {
        for (const what of ["devicelist", "bundle"]) {
          const item = await d.call(`${what}.get`, withAccount({ namespace: ns }));
          const o = Object.entries(item.publish_options).map(([k, v]) => `${k}=${v}`).join(", ");
          console.log(`${ns} ${what}: node ${item.node} item ${item.item_id} options ${o}`);
          console.log(`  ${item.xml}`);
        }
      }
      return 0;
    case "encrypt": {
      if (!opts.to || opts.body === undefined) throw new UsageError("encrypt needs --to JID --body TEXT");
      const p = withAccount({ to: opts.to, body: opts.body });
      if (opts.namespace) p.namespaces = [opts.namespace];
      // A group chat: `to` lists the members' real JIDs, the SCE envelope names the room.
      if (opts.room) p.sce_to = opts.room;
      const r = await d.call("encrypt", p);
      for (const dev of r.devices) {
        const note = dev.reason ? ` (${dev.reason})` : "";
        console.error(`${dev.jid} device ${dev.device_id} [${dev.namespace}]: ${dev.status}${note}`);
      }
      showActions(r.actions);
      if (r.messages.length === 0) {
        console.error("nothing to send: no device of the contact could be encrypted for");
        return 1;
      }
      // Each element goes into a <message type='chat' to=JID>, next to a fallback <body>, an EME
      // hint (urn:xmpp:eme:0) and <store xmlns='urn:xmpp:hints'/>: see docs/clients.md.
      for (const m of r.messages) console.log(m.xml);
      return 0;
    }
    case "decrypt": {
      if (!opts.from || !opts.xml || opts.to?.length > 1) {
        throw new UsageError("decrypt needs --from JID --xml FILE|- and at most one --to");
      }
      const xml = fs.readFileSync(opts.xml === "-" ? 0 : opts.xml, "utf8").trim();
      // `to` is where the stanza was addressed (us, or the room); the daemon compares it with the
      // OMEMO 2 envelope so that a message for someone else cannot be replayed to us.
      const to = opts.to?.[0] ?? account ?? (await d.call("fingerprint.get")).jid;
      const p = withAccount({ from: opts.from, xml, to, group_chat: !!opts["group-chat"] });
      let r;
      try {
        r = await d.call("decrypt", p);
      } catch (e) {
        if (!(e instanceof RpcError) || e.kind !== "invalid_params") throw e;
        // An omemod without the `to` param: decrypt without it and check the envelope here.
        delete p.to;
        delete p.group_chat;
        r = await d.call("decrypt", p);
        const env = r.envelope;
        if (env && (env.to !== to || env.from !== opts.from)) {
          console.error(`refused: the envelope says from ${env.from} to ${env.to}, the stanza from ${opts.from} to ${to}`);
          return 1;
        }
      }
      let extra = r.key_exchange ? " key exchange" : "";
      // Seen before (e.g. from the archive): show it, but do not notify again.
      if (r.redelivered) extra += ` redelivered (first at ${r.first_decrypted_at})`;
      const s = r.sender;
      console.error(`from ${s.jid} device ${s.device_id} [${r.namespace}] trust ${s.trust}${extra}`);
      showActions(r.actions);
      if (r.empty) console.error("(empty message: nothing to show)");
      else console.log(r.body ?? "");
      return 0;
    }
    case "events": {
      const count = opts.count === undefined ? Infinity : Number(opts.count);
      let seen = 0;
      const done = new Promise((resolve) => {
        d.onEvent = (e) => {
          // in_answer: the call that caused it got it as an action and does it; just note it.
          console.log(describe(e) + (e.in_answer ? " (the caller does it)" : ""));
          if (++seen >= count) resolve(0);
        };
      });
      const sub = await d.call("subscribe");
      console.log(`subscribed (${sub.subscription}); waiting for events`);
      return done;
    }
    default:
      throw new UsageError(`unknown command ${cmd}`);
  }
}

class UsageError extends Error {}

async function main() {
  let args;
  try {
    args = parseArgs({
      allowPositionals: true,
      options: {
        socket: { type: "string" },
        account: { type: "string" },
        to: { type: "string", multiple: true },
        room: { type: "string" },
        body: { type: "string" },
        namespace: { type: "string" },
        from: { type: "string" },
        xml: { type: "string" },
        "group-chat": { type: "boolean" },
        count: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    console.error(`usage: ${e.message}`);
    return 2;
  }
  const { values: opts, positionals } = args;
  if (opts.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (positionals.length !== 1) {
    console.error("usage: node_client.mjs [--socket PATH] [--account JID] status|publish-info|encrypt|decrypt|events … (--help: all of it)");
    return 2;
  }
  const account = opts.account ?? process.env.OMEMOD_ACCOUNT ?? null;
  const socketPath = opts.socket ?? defaultSocket();
  let d;
  try {
    d = await Omemod.connect(socketPath);
  } catch (e) {
    console.error(`cannot use omemod's socket ${socketPath}: ${e.message} (is \`omemod serve\` running?)`);
    return 2;
  }
  try {
    return await run(d, account, positionals[0], opts);
  } catch (e) {
    if (e instanceof RpcError) {
      console.error(`error: ${await explain(d, e, account)}`);
      return 1;
    }
    console.error(`error: ${e.message}`);
    return 2;
  } finally {
    d.close();
  }
}

process.exitCode = await main();
