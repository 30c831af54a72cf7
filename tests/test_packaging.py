"""
The twistd plugin is found, in the development install and in a wheel.
"""

import os
import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import TestCase

from tests.wheel import buildWheel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class PluginTests(TestCase):
    def test_getPlugins(self):
        """
        Twisted's plugin scan finds C{gateway} in this install.
        """
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("gateway", makers)
        self.assertEqual(makers["gateway"].module, "gateway.tap")

    def test_twistdHelp(self):
        """
        C{twistd --help} lists C{gateway}, without a plugin-cache warning.
        """
        result = subprocess.run(
            [TWISTD, "--help"], capture_output=True, text=True, timeout=60, cwd="/"
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(" gateway ", result.stdout)
        self.assertNotIn("cache", result.stderr.lower())

    def test_wheel(self):
        """
        C{pip install .} ships the plugin file in twisted/plugins (and no
        __init__.py there, which would hide Twisted's own plugins) and every
        package of the project.
        """
        names = set(buildWheel(self.mktemp())[1])
        self.assertIn("twisted/plugins/gateway_plugin.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertIn("gateway/tap.py", names)
        self.assertIn("gateway/codec/prefixed.py", names)
        licenses = [name for name in names if name.endswith("/LICENSE")]
        self.assertEqual(len(licenses), 1, names)


class LicenseTests(TestCase):
    def test_mit(self):
        """
        The LICENSE file is the MIT licence setup.cfg declares.
        """
        with open(os.path.join(ROOT, "LICENSE")) as file:
            text = file.read()
        self.assertTrue(text.startswith("MIT License\n"))
        self.assertIn("Copyright (c) the gateway authors", text)
        with open(os.path.join(ROOT, "setup.cfg")) as file:
            self.assertIn("license = MIT\n", file.read())
