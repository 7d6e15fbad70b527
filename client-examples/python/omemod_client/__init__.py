"""omemod_client: an asyncio client of omemod, the daemon that does OMEMO for XMPP clients.

Standard library only. Modules:

- `client`: `Client`, the one class most programs need (connection + every method);
- `connection`: the line protocol, id matching, events, reconnection and its retry rules;
- `methods`: every omemod method as a typed coroutine, declared by its signature;
- `errors`: `RpcError` and one subclass per `data.kind`, and the connection's failures;
- `socket_trust`: the default socket path and the checks that the socket is ours;
- `types`: TypedDicts of results and events, and the namespace constants;
- `slixmpp_plugin`: a slixmpp plugin that gives a slixmpp client OMEMO through omemod (needs
  slixmpp: `pip install 'omemod-client[slixmpp]'`);
- `files`: encrypted files (XEP-0454) from and to paths through the `file.*` methods, the
  upload's PUT and the download's GET;
- `poezio_plugin`: poezio's OMEMO through omemod (`/load omemod` in poezio).

docs/rpc.md in the omemod repository is the contract; docs/clients.md the client flow.
"""

from .client import Client
from .connection import Subscription
from .errors import *  # noqa: F401,F403  (the base classes and one class per error kind)
from .errors import ERROR_CLASSES
from .errors import __all__ as _errors
from .socket_trust import default_socket_path
from .types import NAMESPACES, OLDMEMO, OMEMO2

__version__ = "0.1.0"

__all__ = ["Client", "Subscription", "default_socket_path", "OMEMO2", "OLDMEMO", "NAMESPACES"] + _errors
