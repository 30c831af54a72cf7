"""
A Twisted gateway that translates between message framings.

Clients speak one framing (newline-delimited by default), the backend speaks
another (32-bit length-prefixed by default); the gateway turns each message
from one side into one message on the other.
"""

__version__ = "0.1.0"
