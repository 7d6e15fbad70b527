"""`Client`: the connection (`connection`) with omemod's methods (`methods`) on it."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from .connection import Connection, Subscription
from .methods import Methods, declared
from .types import Unsubscribed


class Client(Methods, Connection):
    """A client of one omemod daemon.

    ```python
    async with Client(account="alice@example.org") as omemod:
        print((await omemod.fingerprint_get())["fingerprint"])
        encrypted = await omemod.encrypt(["bob@example.net"], "hello")
    ```

    `socket`: the daemon's socket (default: `default_socket_path()`); it is checked to be ours
    before every (re)connection. `account`: passed to every method that takes one, unless the
    call names another (pass it: with a second account on the daemon, calls without one fail).
    `timeout`: seconds per call (None: wait for ever). `reconnect_window`: how long to keep trying
    to reconnect after the connection broke (omemod restarting) before calls fail with
    `DaemonUnavailable`.
    """

    def __init__(self, socket: Optional[str] = None, *, account: Optional[str] = None,
                 timeout: Optional[float] = 60.0, reconnect_window: float = 60.0):
        Connection.__init__(self, socket, account=account, timeout=timeout,
                            reconnect_window=reconnect_window)

    async def __aenter__(self) -> "Client":
        await self.connect()
        return self

    @declared("subscribe")
    async def subscribe(self, types: Optional[Sequence[str]] = None) -> Subscription:
        """Events (of `types`, or all), as an async iterator that survives reconnects."""
        return await self._subscribe(types)

    @declared("unsubscribe")
    async def unsubscribe(self, subscription: Union[Subscription, int]) -> Unsubscribed:
        """Ends a subscription (the same as `subscription.close()` for a `Subscription`)."""
        if isinstance(subscription, Subscription):
            await subscription.close()
            return {"unsubscribed": True}
        result: Any = await self.call("unsubscribe", {"subscription": subscription}, retry=False)
        return result
