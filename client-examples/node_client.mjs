// A minimal omemod client in JavaScript (Node.js, no dependencies).
// Usage: node node_client.mjs [SOCKET]
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";

const socketPath = process.argv[2] ??
  path.join(process.env.XDG_RUNTIME_DIR ?? `/run/user/${process.getuid()}`, "omemod", "omemod.sock");

// Refuse a socket another local user could have planted: the socket and its directory must be
// ours and not symlinks, and the directory must not be writable by others (then nobody else can
// swap the socket after this check).
function checkSocket(p) {
  const dir = path.dirname(path.resolve(p));
  for (const f of [dir, p]) {
    const st = fs.lstatSync(f);
    if (st.isSymbolicLink()) throw new Error(`${f} is a symbolic link; refusing to use it`);
    if (st.uid !== process.getuid()) throw new Error(`${f} is owned by uid ${st.uid}, not by us; refusing`);
  }
  if (fs.lstatSync(dir).mode & 0o022) throw new Error(`${dir} is writable by other users; refusing`);
  if (!fs.lstatSync(p).isSocket()) throw new Error(`${p} is not a socket`);
}
checkSocket(socketPath);

const conn = net.createConnection(socketPath);
const pending = new Map();
let nextId = 1;

readline.createInterface({ input: conn }).on("line", (line) => {
  const msg = JSON.parse(line);
  if (msg.method === "event") return console.log("event:", msg.params.event);
  const p = pending.get(msg.id);
  if (!p) return;
  pending.delete(msg.id);
  if (msg.error) p.reject(new Error(`${msg.error.data.kind}: ${msg.error.message}`));
  else p.resolve(msg.result);
});

function call(method, params = {}) {
  const id = nextId++;
  conn.write(JSON.stringify({ jsonrpc: "2.0", id, method, params }) + "\n");
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}

const accounts = await call("account.list");
if (accounts.length === 0) await call("account.create", { jid: "me@example.org" });
const me = await call("fingerprint.get");
console.log(`${me.jid} device ${me.device_id}: ${me.fingerprint}`);
// Requests on one connection run concurrently; answers are matched by id.
const [omemo2, oldmemo] = await Promise.all([
  call("devicelist.get", { namespace: "urn:xmpp:omemo:2" }),
  call("devicelist.get", { namespace: "eu.siacs.conversations.axolotl" }),
]);
console.log(omemo2.node, omemo2.xml);
console.log(oldmemo.node, oldmemo.xml);
conn.end();
