"""The library's methods and error kinds are the daemon's: a method, a param or an error kind
added to omemod fails these tests until the library has it too."""

from __future__ import annotations

import os
import unittest

import omemod_client
from daemon import DaemonTest, discovered_methods
from omemod_client import ERROR_CLASSES, Client
from omemod_client.methods import rpc_methods, rpc_params


class MethodSet(DaemonTest):
    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        async with self.daemon.client() as c:
            self.doc = await c.rpc_discover()

    def test_every_method_of_the_daemon_is_in_the_library(self) -> None:
        daemon = discovered_methods(self.doc)
        library = rpc_methods(Client)
        missing = sorted(set(daemon) - set(library))
        extra = sorted(set(library) - set(daemon))
        self.assertEqual(missing, [], "omemod has methods the library lacks: add a stub to "
                                      "omemod_client/methods.py for each")
        self.assertEqual(extra, [], "the library has methods omemod does not know")

    def test_every_param_of_the_daemon_is_in_the_library(self) -> None:
        library = rpc_methods(Client)
        for name, params in discovered_methods(self.doc).items():
            with self.subTest(method=name):
                self.assertEqual(sorted(rpc_params(library[name])), params,
                                 f"the params of {name} differ from omemod's")

    def test_every_error_kind_of_the_daemon_has_its_exception(self) -> None:
        daemon = {k["kind"]: k["code"] for k in self.doc["x-error-kinds"]}
        library = {kind: cls.code for kind, cls in ERROR_CLASSES.items()}
        self.assertEqual(library, daemon, "omemod_client/errors.py's table differs from omemod's "
                                          "x-error-kinds")

    def test_the_installed_package_is_the_one_tested(self) -> None:
        # The suite runs against a copy installed with pip (tests/e2e/clients.rs): make sure
        # it is that copy, not the source tree, that was imported.
        where = os.environ.get("OMEMOD_CLIENT_INSTALLED_IN")
        if not where:
            self.skipTest("not run from an installation (OMEMOD_CLIENT_INSTALLED_IN unset)")
        self.assertTrue(os.path.realpath(omemod_client.__file__).startswith(os.path.realpath(where)),
                        omemod_client.__file__)


if __name__ == "__main__":
    unittest.main()
