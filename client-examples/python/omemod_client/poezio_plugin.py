"""poezio's OMEMO (0.3 and 2) through omemod: a plugin for poezio 0.18's E2EE interface.

Install it into poezio's environment and load it:

    pip install ./client-examples/python       # into the venv poezio runs from
    /load omemod                               # in poezio, or plugins_autoload = omemod

Then `/omemo` in a chat or room tab turns encryption on for it (poezio remembers it per JID),
`/omemo_fingerprint [jid]` shows fingerprints and their trust, `/omemo_trusted FINGERPRINT` and
`/omemo_distrusted FINGERPRINT` decide on a contact's key (in the contact's tab). Every OMEMO
operation is done by omemod, through the slixmpp plugin `omemod` (`slixmpp_plugin`); nothing of
OMEMO is stored by poezio. Settings, in `omemod.cfg` of poezio's plugins_conf_dir, section
`[omemod]`: `socket` (default omemod's default path), `account` (default: our bare JID),
`create_account` (default true: loading the plugin is asking for OMEMO on this account),
`namespaces` (the order to encrypt in, default `omemo2 oldmemo`).
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import Any, List, Optional, Tuple

from poezio.plugin_e2ee import E2EEPlugin, NothingToEncrypt
from poezio.tabs import DynamicConversationTab, MucTab, StaticConversationTab
from slixmpp import JID, Message

from . import slixmpp_plugin
from .errors import OmemodError
from .types import NAMESPACES, OLDMEMO, OMEMO2

SHORT = {"omemo2": OMEMO2, "oldmemo": OLDMEMO}
ENCRYPTED = {f"{{{ns}}}encrypted" for ns in NAMESPACES}
EME = "{urn:xmpp:eme:0}encryption"


class Plugin(E2EEPlugin):
    encryption_name = "omemo"  # the tab command (/omemo) and the tag in the info bar
    # The EME poezio adds to what it sends (one per stanza): the version every OMEMO client knows.
    eme_ns = OLDMEMO
    encrypted_tags = [(OMEMO2, "encrypted"), (OLDMEMO, "encrypted")]
    supported_tab_types = (DynamicConversationTab, StaticConversationTab, MucTab)
    trust_states = {"accepted": {"trusted"}, "rejected": {"distrusted", "undecided"}}
    default_config = {"omemod": {"socket": "", "account": "", "create_account": True,
                                 "namespaces": "omemo2 oldmemo"}}

    def init(self) -> None:
        xmpp = self.core.xmpp
        namespaces = [SHORT[n] for n in str(self.config.get("namespaces")).split() if n in SHORT]
        xmpp.register_plugin("omemod", {
            "socket": self.config.get("socket") or None,
            "account": self.config.get("account") or None,
            "create_account": bool(self.config.get("create_account")),
            "namespaces": namespaces or None,
            # poezio decrypts through this plugin's hooks, and enables carbons itself.
            "auto_decrypt": False,
            "carbons": False,
        }, module=slixmpp_plugin)
        self.omemod: slixmpp_plugin.XEP_0384_omemod = xmpp.plugin["omemod"]
        super().init()
        for event, handler in (("omemo_initialized", self._ready), ("omemo_failed", self._failed),
                               ("omemo_identity_changed", self._identity_changed),
                               ("omemo_trust_decision_needed", self._trust_needed)):
            self.api.add_slix_event_handler(event, handler)

    def cleanup(self) -> None:
        super().cleanup()
        self.core.xmpp.plugin.disable("omemod")

    # ---- what the user sees -----------------------------------------------------------------

    def _ready(self, _event: Any) -> None:
        self.api.information(f"OMEMO by omemod: device {self.omemod.device_id}, fingerprint "
                             f"{self.omemod.fingerprint}", "Info")

    def _failed(self, error: Exception) -> None:
        self.api.information(f"OMEMO (omemod) is not available: {error}", "Error")

    def _identity_changed(self, e: Any) -> None:
        self.api.information(f"OMEMO: {e['peer']} device {e['device_id']} shows a NEW identity key "
                             f"{e['new_fingerprint']} (was {e['old_fingerprint']}); nothing is encrypted "
                             "for it or accepted from it until you accept it (omemod identity.accept)", "Error")

    def _trust_needed(self, e: Any) -> None:
        self.api.information(f"OMEMO: new key of {e['peer']}: {e['fingerprint']}; decide with "
                             f"/omemo_trusted or /omemo_distrusted in their tab", "Info")

    # ---- the E2EE interface -----------------------------------------------------------------

    async def _decrypt(self, message: Message, tab: Any) -> None:
        # Both namespaces, whatever EME the sender added (or none).
        if not self.omemod.is_encrypted(message):
            return
        jid: Optional[JID] = None
        if isinstance(tab, MucTab):
            user = tab.get_user_by_name(message["from"].resource)
            jid = user.jid if user is not None and user.jid else None
        await self.decrypt(message, jid, tab)

    async def _decrypt_encryptedtag(self, stanza: Any) -> None:
        # A stanza without <body>. With an EME poezio routes it to its tab like any message
        # (and so to _decrypt); without, it is a heartbeat or key transport: decrypt it here,
        # quietly, so that its actions are done, whether or not a tab is open.
        if not isinstance(stanza, Message) or stanza.xml.find("{jabber:client}body") is not None \
                or stanza.xml.find(EME) is not None:
            return
        if stanza["from"] == self.core.xmpp.boundjid:
            return
        try:
            await self.omemod.decrypt_message(stanza)
        except (OmemodError, ValueError) as e:
            self.api.information(f"OMEMO: empty message from {stanza['from']} not decrypted: {e}", "Debug")

    async def _encrypt(self, stanza: Any) -> Any:
        # Stanzas that already carry OMEMO (heartbeats the slixmpp plugin sends) go out as they are.
        if isinstance(stanza, Message) and self.omemod.is_encrypted(stanza):
            raise NothingToEncrypt()
        return await super()._encrypt(stanza, passthrough=True)

    async def decrypt(self, message: Message, jid: Optional[JID], tab: Any) -> None:
        sender = JID(jid).bare if jid and message["type"] == "groupchat" else None
        try:
            d = await self.omemod.decrypt_message(message, sender=sender)
        except (OmemodError, ValueError) as e:
            text = f"[OMEMO: could not decrypt: {getattr(e, 'kind', e)}]"
        else:
            text = "" if d.empty else (d.body or "")
        for child in list(message.xml):
            if child.tag in ENCRYPTED or child.tag == EME:
                message.xml.remove(child)
        del message["body"]
        if text:
            ET.SubElement(message.xml, "{jabber:client}body").text = text

    async def encrypt(self, message: Message, jids: Optional[List[JID]], tab: Any) -> None:
        if jids is None:
            raise OmemodError("this room does not show its members' real JIDs: OMEMO needs a "
                              "non-anonymous, members-only room")
        recipients = [JID(j).bare for j in jids if JID(j).bare != self.omemod.me]
        if not isinstance(tab, MucTab):
            recipients = [JID(tab.jid).bare]
        out = await self.omemod.encrypt_message(message, recipients)
        if out.message is None:
            raise slixmpp_plugin.NoRecipientDevice(out.missed)
        if out.missed:
            self.api.information("OMEMO: not encrypted for " + ", ".join(
                f"{d['jid']} device {d['device_id']} ({d['status']})" for d in out.missed), "Warning")
        for child in list(out.message.xml):
            if child.tag in ENCRYPTED or child.tag == "{urn:xmpp:hints}store":
                message.xml.append(child)

    async def get_fingerprints(self, jid: JID) -> List[Tuple[str, bool]]:
        bare = JID(jid).bare
        own = await self.omemod.client.fingerprint_get()
        found = [(f"{own['fingerprint']} (this device)", True)] if bare == self.omemod.me else []
        for entry in await self.omemod.client.trust_list(jid=bare):
            found.append((f"{entry['fingerprint']} ({entry['level']})", False))
        return found

    def store_trust(self, jid: JID, state: str, fingerprint: str) -> None:
        asyncio.ensure_future(self._store_trust(JID(jid).bare, state, fingerprint))

    async def _store_trust(self, jid: str, state: str, fingerprint: str) -> None:
        try:
            decided = await self.omemod.client.trust_set(jid, fingerprint, state)
        except OmemodError as e:
            self.api.information(f"OMEMO: {jid} {fingerprint}: {e}", "Error")
            return
        self.api.information(f"OMEMO: {jid} {decided['fingerprint']} is now {decided['level']}", "Info")
