"""The JSON-RPC line connection to omemod: calls matched by id, events routed to subscriptions,
and reconnection following docs/rpc.md's retry rules.

A call that is safe to repeat (the method says so, see `methods`) is sent again on the next
connection when the connection breaks before its answer; any other call fails with
`ConnectionLost`, because it may or may not have happened. Subscriptions end with their
connection on the daemon's side: after a reconnect this module subscribes again with the same
filter and hands each subscription an `events_lost` event with `missed: None` and
`reconnected: True` (events of the gap are not replayed: re-read what you keep).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import time
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional

from . import socket_trust
from .errors import (CallTimeout, ConnectionLost, DaemonUnavailable, OmemodError, RpcError,
                     SocketNotTrusted, error_from)
from .types import Event

log = logging.getLogger("omemod_client")

MAX_LINE = 64 << 20
"""Longest answer line we accept (the daemon's default limit is 16 MiB)."""
EVENT_QUEUE = 4096
"""Events kept per subscription while nobody reads them; older ones are dropped and counted."""


class _Lost(Exception):
    """The link carrying a call went away before its answer."""


class _Link:
    """One socket connection: pending calls by id, subscriptions by the daemon's id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_close: Callable[["_Link"], None]):
        self.on_close = on_close
        self.reader = reader
        self.writer = writer
        self.pending: Dict[int, asyncio.Future] = {}
        self.hooks: Dict[int, Callable[[Any], None]] = {}
        self.subs: Dict[int, Subscription] = {}
        self.task: Optional[asyncio.Task] = None
        self.fatal: Optional[BaseException] = None
        self.closed = asyncio.Event()

    def send(self, rid: int, method: str, params: Mapping[str, Any]) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        line = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params},
                          ensure_ascii=False)
        self.writer.write(line.encode("utf-8") + b"\n")
        return fut

    async def run(self) -> None:
        try:
            while True:
                line = await self.reader.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    log.warning("omemod sent a line that is not JSON")
                    continue
                if isinstance(msg, dict):
                    self.dispatch(msg)
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            log.info("omemod connection: %s", e)
        finally:
            self.close()

    def dispatch(self, msg: Dict[str, Any]) -> None:
        if msg.get("method") == "event":
            params = msg.get("params") or {}
            sub = self.subs.get(params.get("subscription"))
            if sub is not None and isinstance(params.get("event"), dict):
                sub._push(params["event"])
            return
        rid = msg.get("id")
        if rid is None and isinstance(msg.get("error"), dict):
            # Said once before the daemon closes the connection (unauthorized, too many
            # connections) or about a line it could not parse.
            err = error_from("(connection)", msg["error"])
            log.warning("omemod: %s", err)
            if err.kind == "unauthorized":
                self.fatal = SocketNotTrusted(f"omemod refused us: {err.message}")
            return
        fut = self.pending.pop(rid, None)
        hook = self.hooks.pop(rid, None)
        if fut is None or fut.done():
            return
        if hook is not None and "result" in msg:
            hook(msg["result"])  # before anything else runs: events may follow at once
        fut.set_result(msg)

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.writer.close()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(_Lost())
                fut.exception()  # retrieved here: a caller that timed out no longer waits
        self.pending.clear()
        self.hooks.clear()
        self.on_close(self)


class Subscription:
    """Events of one `subscribe`, in order: `async for event in sub`, or `await sub.next()`.

    It outlives reconnects (see the module docs). `close()` unsubscribes.
    """

    def __init__(self, conn: "Connection", types: Optional[List[str]]):
        self.types = types
        self.id: Optional[int] = None  # the daemon's id on the current connection
        self._conn = conn
        self._queue: Deque[Event] = collections.deque()
        self._missed = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._subscribing = False

    def _push(self, event: Event) -> None:
        if len(self._queue) >= EVENT_QUEUE:
            self._queue.popleft()
            self._missed += 1
        self._queue.append(event)
        self._wake.set()

    def _gap(self) -> None:
        self._push({"type": "events_lost", "missed": None, "reconnected": True})

    def _end(self) -> None:
        self._closed = True
        self._wake.set()

    async def next(self, timeout: Optional[float] = None) -> Event:
        """The next event; `asyncio.TimeoutError` after `timeout` seconds, `StopAsyncIteration`
        once closed."""
        while True:
            if self._missed:
                missed, self._missed = self._missed, 0
                return {"type": "events_lost", "missed": missed}
            if self._queue:
                return self._queue.popleft()
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await asyncio.wait_for(self._wake.wait(), timeout)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        return await self.next()

    async def close(self) -> None:
        """Unsubscribes (when still connected) and ends the iteration."""
        if self._closed:
            return
        self._end()
        self._conn._subscriptions.discard(self)
        link, sid = self._conn._link, self.id
        if link is not None and sid is not None and link.subs.pop(sid, None) is self:
            try:
                await self._conn.call("unsubscribe", {"subscription": sid}, retry=False)
            except (ConnectionLost, DaemonUnavailable, RpcError):
                pass  # the connection, and with it the subscription, is gone anyway


class Connection:
    """The connection machinery under `Client`: one socket, reopened when it breaks."""

    def __init__(self, socket: Optional[str] = None, *, account: Optional[str] = None,
                 timeout: Optional[float] = 60.0, reconnect_window: float = 60.0):
        self.socket_path = socket or socket_trust.default_socket_path()
        self.account = account
        self.timeout = timeout
        self.reconnect_window = reconnect_window
        self._link: Optional[_Link] = None
        self._linking: Optional[asyncio.Task] = None
        self._ids = itertools.count(1)
        self._subscriptions: "set[Subscription]" = set()
        self._closed = False
        self._reconnects = 0

    @property
    def reconnects(self) -> int:
        """How many times the connection was reopened after it broke."""
        return self._reconnects

    def __repr__(self) -> str:
        state = "connected" if self._link is not None else "not connected"
        return f"<{type(self).__name__} {self.socket_path} account={self.account} {state}>"

    async def connect(self, timeout: float = 0.0) -> None:
        """Opens the connection, retrying for `timeout` seconds while no daemon answers (0: one
        try). Raises `DaemonUnavailable` or `SocketNotTrusted`."""
        if self._link is None:
            await self._open(time.monotonic() + timeout)

    async def close(self) -> None:
        """Closes the connection; pending calls fail, subscriptions end."""
        self._closed = True
        if self._linking is not None:
            self._linking.cancel()
        link, self._link = self._link, None
        if link is not None:
            link.close()
            if link.task is not None:
                await asyncio.gather(link.task, return_exceptions=True)
        for sub in list(self._subscriptions):
            sub._end()
        self._subscriptions.clear()

    async def __aenter__(self) -> "Connection":
        await self.connect()
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        await self.close()

    async def call(self, method: str, params: Optional[Mapping[str, Any]] = None, *,
                   retry: bool = False, timeout: Optional[float] = None) -> Any:
        """Calls `method` and returns its result; raises the `RpcError` subclass of its error.

        `retry`: send it again on the next connection if the connection breaks first (only for
        calls docs/rpc.md calls safe to retry); otherwise that raises `ConnectionLost`.
        """
        return await self._call(method, dict(params or {}), retry, timeout, None)

    async def _call(self, method: str, params: Dict[str, Any], retry: bool, timeout: Optional[float],
                    hook: Optional[Callable[[Any], None]]) -> Any:
        limit = self.timeout if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            link = await self._ready(deadline)
            rid = next(self._ids)
            fut = link.send(rid, method, params)
            if hook is not None:
                link.hooks[rid] = hook
            try:
                await link.writer.drain()
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                reply = await asyncio.wait_for(asyncio.shield(fut), left)
            except asyncio.TimeoutError:
                link.pending.pop(rid, None)
                link.hooks.pop(rid, None)
                raise CallTimeout(f"{method}: no answer from omemod within {limit} s") from None
            except (_Lost, OSError):
                link.close()  # a failed write may come before the reader sees the end
                if link.fatal is not None:
                    raise link.fatal from None
                if not retry or self._closed:
                    raise ConnectionLost(method) from None
                log.info("%s: connection lost, sending it again after reconnecting", method)
                continue
            if "error" in reply:
                raise error_from(method, reply["error"] or {})
            return reply.get("result")

    async def _ready(self, deadline: Optional[float]) -> _Link:
        """The live link, reconnecting (one attempt shared by all callers) when there is none."""
        while True:
            if self._closed:
                raise OmemodError("the client is closed")
            link = self._link
            if link is not None and not link.closed.is_set():
                return link
            if self._linking is None:
                window = time.monotonic() + self.reconnect_window
                self._linking = asyncio.ensure_future(self._open(window))
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                await asyncio.wait_for(asyncio.shield(self._linking), left)
            except asyncio.TimeoutError:
                raise CallTimeout("omemod: not reconnected in time") from None

    async def _open(self, until: float) -> None:
        delay = 0.05
        try:
            while True:
                try:
                    link = await self._dial()
                    break
                except SocketNotTrusted:
                    raise
                except OSError as e:
                    if time.monotonic() + delay > until or self._closed:
                        raise DaemonUnavailable(f"cannot reach omemod at {self.socket_path}: {e}") from e
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            self._link = link
            link.task = asyncio.ensure_future(link.run())
            await self._resubscribe(link)
        finally:
            self._linking = None

    async def _dial(self) -> _Link:
        try:
            socket_trust.check_socket_path(self.socket_path)
        except PermissionError as e:
            raise SocketNotTrusted(str(e)) from None
        reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=MAX_LINE)
        try:
            socket_trust.check_peer(writer.get_extra_info("socket"), self.socket_path)
        except PermissionError as e:
            writer.close()
            raise SocketNotTrusted(str(e)) from None
        return _Link(reader, writer, self._closed_link)

    def _closed_link(self, link: _Link) -> None:
        """Called once for each link as it closes, whoever noticed first."""
        if self._link is not link:
            return
        self._link = None
        if link.fatal is not None:
            self._closed = True
            for sub in list(self._subscriptions):
                sub._end()
        elif not self._closed:
            self._reconnects += 1
            log.warning("omemod connection lost; reconnecting")
            for sub in self._subscriptions:
                sub.id = None

    async def _resubscribe(self, link: _Link) -> None:
        for sub in [s for s in self._subscriptions if s.id is None and not s._subscribing]:
            try:
                await self._subscribe_on(link, sub)
            except RpcError as e:
                log.warning("subscribing again after a reconnect failed: %s", e)
                sub._end()
                self._subscriptions.discard(sub)
                continue
            except (_Lost, OSError):
                link.close()
                return  # this link died too; the next one subscribes again
            sub._gap()

    async def _subscribe_on(self, link: _Link, sub: Subscription) -> None:
        def registered(result: Any) -> None:
            sub.id = int(result["subscription"])
            link.subs[sub.id] = sub

        params: Dict[str, Any] = {} if sub.types is None else {"types": list(sub.types)}
        rid = next(self._ids)
        fut = link.send(rid, "subscribe", params)
        link.hooks[rid] = registered
        await link.writer.drain()
        reply = await fut
        if "error" in reply:
            raise error_from("subscribe", reply["error"] or {})

    async def _subscribe(self, types: Optional[Iterable[str]]) -> Subscription:
        sub = Subscription(self, None if types is None else list(types))
        sub._subscribing = True
        self._subscriptions.add(sub)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            while True:
                link = await self._ready(deadline)
                try:
                    await self._subscribe_on(link, sub)
                except (_Lost, OSError):
                    link.close()
                    if link.fatal is not None:
                        raise link.fatal from None
                    continue  # a subscription made on the next connection is as good
                if not link.closed.is_set():
                    return sub
        except BaseException:
            self._subscriptions.discard(sub)
            raise
        finally:
            sub._subscribing = False
