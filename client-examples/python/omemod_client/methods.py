"""Every method of omemod as a typed coroutine, declared by its signature.

A method is a stub: `@rpc(name, retry=…)`, the signature (the params, by their JSON names; `from_`
is `from`) and a docstring. The decorator makes it a call: arguments left at None are not sent,
and `account` defaults to the client's. `retry` is docs/rpc.md's "safe to retry" for that method
(a function of the params where it depends on them). Adding a method to the daemon means adding
one stub here; `tests/test_methods.py` compares this set, and each method's params, with the
daemon's `rpc.discover`.
"""

from __future__ import annotations

import functools
import inspect
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional, Sequence, TypeVar, Union,
                    cast)

from .types import (Account, BundleUpdated, Catchup, Decrypted, DeletedAccount, DeviceEntry,
                    DevicelistUpdated, Encrypted, IdentityAccepted, Link, LinkVerified, Plan, Publication,
                    RenewedDeviceId, Status, TrustEntry)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
Retry = Union[bool, Callable[[Dict[str, Any]], bool]]

_RPC_NAME = "__omemod_method__"


def rpc(name: str, *, retry: Retry = False) -> Callable[[F], F]:
    """Turns a stub into the call of omemod's method `name`."""

    def wrap(stub: F) -> F:
        sig = inspect.signature(stub)
        takes_account = "account" in sig.parameters

        @functools.wraps(stub)
        async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(self, *args, **kwargs)
            params = {k.rstrip("_"): v for k, v in list(bound.arguments.items())[1:] if v is not None}
            if takes_account and "account" not in params and self.account is not None:
                params["account"] = self.account
            again = retry(params) if callable(retry) else retry
            return await self.call(name, params, retry=again)

        setattr(method, _RPC_NAME, name)
        return cast(F, method)

    return wrap


def declared(name: str) -> Callable[[F], F]:
    """Marks a method written by hand (subscriptions) as the call of `name`."""

    def wrap(f: F) -> F:
        setattr(f, _RPC_NAME, name)
        return f

    return wrap


def rpc_methods(cls: type) -> Dict[str, Callable[..., Any]]:
    """omemod's method name → the function of `cls` that calls it."""
    found = {}
    for attr in dir(cls):
        f = getattr(cls, attr)
        name = getattr(f, _RPC_NAME, None)
        if name is not None:
            found[name] = f
    return found


def rpc_params(f: Callable[..., Any]) -> List[str]:
    """The JSON param names a method stub sends."""
    return [p.rstrip("_") for p in list(inspect.signature(f).parameters)[1:]]


def _with_key(params: Dict[str, Any]) -> bool:
    return "idempotency_key" in params


class Methods:
    """omemod's methods. Mixed into `Client`, which provides `call` and `account`."""

    account: Optional[str]

    if TYPE_CHECKING:
        async def call(self, method: str, params: Optional[Dict[str, Any]] = None, *,
                       retry: bool = False, timeout: Optional[float] = None) -> Any: ...

    # ---- the daemon --------------------------------------------------------------------------

    @rpc("status", retry=True)
    async def status(self) -> Status:
        """The daemon: version, pid, socket, database, durability, clients, rollback."""

    @rpc("rpc.discover", retry=True)
    async def rpc_discover(self) -> Dict[str, Any]:
        """The OpenRPC document: every method, its params, result and errors."""

    @rpc("unlock", retry=True)
    async def unlock(self, passphrase: str) -> Dict[str, Any]:
        """Gives a locked daemon (its database's key is a passphrase) that passphrase.
        `{"unlocked": false}` when it was not locked."""

    # ---- accounts ----------------------------------------------------------------------------

    @rpc("account.create")
    async def account_create(self, jid: str, *, trust_mode: Optional[str] = None,
                             avoid: Optional[Sequence[int]] = None) -> Account:
        """A new OMEMO device for `jid` (only when the user asks for one). `avoid`: the device
        ids on our own published lists. Its `actions` say what to fetch and publish first."""

    @rpc("account.list", retry=True)
    async def account_list(self) -> List[Account]:
        """Every account of the daemon."""

    @rpc("account.renew_device_id")
    async def account_renew_device_id(self, *, avoid: Optional[Sequence[int]] = None,
                                      account: Optional[str] = None) -> RenewedDeviceId:
        """A new device id for our device (after a collision); publish as `actions` say."""

    @rpc("account.delete", retry=True)
    async def account_delete(self, jid: str) -> DeletedAccount:
        """Deletes the account `jid` and every secret of it, for good."""

    @rpc("fingerprint.get", retry=True)
    async def fingerprint_get(self, *, account: Optional[str] = None) -> Account:
        """Our JID, device id and fingerprint."""

    # ---- publishing and following device lists and bundles ------------------------------------

    @rpc("bundle.get", retry=True)
    async def bundle_get(self, namespace: str, *, account: Optional[str] = None) -> Publication:
        """Our bundle in `namespace`, with the PEP node, item and publish options."""

    @rpc("devicelist.get", retry=True)
    async def devicelist_get(self, namespace: str, *, remove: Optional[Sequence[int]] = None,
                             account: Optional[str] = None) -> Publication:
        """Our device list as last received plus our device, ready to publish; without the own
        devices in `remove` (the user removes them, e.g. after an `offer_device_removal`)."""

    @rpc("devicelist.update", retry=True)
    async def devicelist_update(self, jid: str, namespace: str, xml: str, *,
                                account: Optional[str] = None) -> DevicelistUpdated:
        """A device list seen on PEP (`<devices/>` or `<list/>`), of a contact or our own."""

    @rpc("bundle.update", retry=True)
    async def bundle_update(self, jid: str, device_id: int, namespace: str, xml: str, *,
                            account: Optional[str] = None) -> BundleUpdated:
        """A bundle fetched from PEP (validated before it is stored)."""

    @rpc("devices.list", retry=True)
    async def devices_list(self, *, jid: Optional[str] = None,
                           account: Optional[str] = None) -> List[DeviceEntry]:
        """Known devices (of `jid`, or everyone's): label, fingerprint, trust and its source,
        staleness, and which one is this device."""

    # ---- messages ----------------------------------------------------------------------------

    @rpc("encrypt", retry=_with_key)
    async def encrypt(self, to: Sequence[str], body: Optional[str] = None, *,
                      namespaces: Optional[Sequence[str]] = None, all_namespaces: Optional[bool] = None,
                      sce_to: Optional[str] = None, idempotency_key: Optional[str] = None,
                      forms: Optional[Sequence[str]] = None, account: Optional[str] = None) -> Encrypted:
        """`<encrypted>` elements for every device of `to` (and our other devices); no `body`:
        an empty message. In a group chat `sce_to` is the room. With an `idempotency_key` (the
        stanza id) a repeated call returns the first answer, so it is retried after a reconnect.
        No device of `to` reached: `NoDeviceReached`, whose `data["devices"]` say why."""

    @rpc("encrypt.plan", retry=True)
    async def encrypt_plan(self, to: Sequence[str], *, namespaces: Optional[Sequence[str]] = None,
                           all_namespaces: Optional[bool] = None, account: Optional[str] = None) -> Plan:
        """Which devices `encrypt` would cover now and what to fetch first; changes nothing."""

    @rpc("decrypt", retry=True)
    async def decrypt(self, from_: str, xml: Optional[str] = None, *, element: Optional[Dict[str, Any]] = None,
                      to: Optional[str] = None, group_chat: Optional[bool] = None,
                      sent_at: Optional[str] = None, account: Optional[str] = None) -> Decrypted:
        """An `<encrypted>` element from `from_` (bare JID; a room occupant's real JID). `to`:
        the stanza's bare `to` (us, or the room), `group_chat` for `type='groupchat'`; `sent_at`:
        the stanza's delay stamp (XEP-0203, XEP-0082 form), checked against OMEMO 2's `<time>`.
        Our own message (a sent carbon, a room's reflection) comes back with `own` true."""

    @rpc("heartbeat", retry=True)
    async def heartbeat(self, jid: str, namespace: str, device_id: int, *,
                        account: Optional[str] = None) -> Encrypted:
        """An empty message for one device (the `send_heartbeat` action)."""

    @rpc("session.replace")
    async def session_replace(self, jid: str, namespace: str, device_id: int, *,
                              account: Optional[str] = None) -> Encrypted:
        """A new session with the device, as an empty key-exchange message to send."""

    @rpc("catchup.begin", retry=True)
    async def catchup_begin(self, *, account: Optional[str] = None) -> Catchup:
        """Before reading the archive (MAM) after being offline."""

    @rpc("catchup.end", retry=True)
    async def catchup_end(self, *, account: Optional[str] = None) -> Catchup:
        """After the archive's last page: the deferred heartbeats come as `actions`."""

    # ---- trust -------------------------------------------------------------------------------

    @rpc("trust.list", retry=True)
    async def trust_list(self, *, jid: Optional[str] = None,
                         account: Optional[str] = None) -> List[TrustEntry]:
        """Trust decisions (of `jid`, or everyone's)."""

    @rpc("trust.set", retry=True)
    async def trust_set(self, jid: str, fingerprint: str, level: str, *,
                        account: Optional[str] = None) -> TrustEntry:
        """`level`: `trusted`, `undecided` or `distrusted`."""

    # ---- files (XEP-0454) -------------------------------------------------------------------
    # A transfer belongs to its connection: a reconnect ends it, so none of these but
    # `file.link.parse` and `file.cancel` is repeated after a lost answer.

    @rpc("file.link.parse", retry=True)
    async def file_link_parse(self, link: str) -> Dict[str, Any]:
        """Checks an `aesgcm://` link: the HTTPS URL to download, the IV and key sizes."""

    @rpc("file.encrypt.begin")
    async def file_encrypt_begin(self, size: int, *, url: Optional[str] = None) -> Dict[str, Any]:
        """Starts encrypting a file of `size` bytes: a transfer id, the upload size (the file and
        its 16-byte tag) and the fragment (or, with the slot's `url`, the whole link)."""

    @rpc("file.encrypt.chunk")
    async def file_encrypt_chunk(self, transfer: str, offset: int, data: str) -> Dict[str, Any]:
        """The next chunk (base64, at `offset`); the answer's `data` is what to upload."""

    @rpc("file.encrypt.finish")
    async def file_encrypt_finish(self, transfer: str) -> Dict[str, Any]:
        """The tag to upload last; the transfer ends."""

    @rpc("file.decrypt.begin")
    async def file_decrypt_begin(self, size: int, *, link: Optional[str] = None,
                                 fragment: Optional[str] = None) -> Dict[str, Any]:
        """Starts decrypting a downloaded file of `size` bytes given its link (or its fragment)."""

    @rpc("file.decrypt.check")
    async def file_decrypt_check(self, transfer: str, offset: int, data: str) -> Dict[str, Any]:
        """First pass: checks the next chunk; after the last one, the tag. Releases nothing."""

    @rpc("file.decrypt.read")
    async def file_decrypt_read(self, transfer: str, offset: int, data: str) -> Dict[str, Any]:
        """Second pass, once checked: the plaintext of the same chunk (`done` at the end)."""

    @rpc("file.cancel", retry=True)
    async def file_cancel(self, transfer: str) -> Dict[str, Any]:
        """Ends a transfer of this connection."""

    # ---- verification and labels -------------------------------------------------------------

    @rpc("link.get", retry=True)
    async def link_get(self, *, account: Optional[str] = None) -> Link:
        """Our verification link (`xmpp:…?omemo-sid-…`, for a QR code) and our fingerprint as
        Conversations, Dino and Gajim show it."""

    @rpc("link.verify", retry=True)
    async def link_verify(self, link: str, *, account: Optional[str] = None) -> LinkVerified:
        """Applies a scanned link: every key it names is trusted if all match what omemod holds;
        otherwise `LinkMismatch` / `LinkUnknownDevice` and nothing changes."""

    @rpc("account.set_label", retry=True)
    async def account_set_label(self, label: str, *, account: Optional[str] = None) -> Dict[str, Any]:
        """Names our device (at most 53 characters), signed; publish the OMEMO 2 device list the
        answer's actions ask for."""

    @rpc("identity.accept", retry=True)
    async def identity_accept(self, jid: str, namespace: str, device_id: int, fingerprint: str, *,
                              account: Optional[str] = None) -> IdentityAccepted:
        """The user accepts a device's new identity key (from an `identity_changed`)."""
