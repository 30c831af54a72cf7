"""
Log observers to name with twistd's C{--logger} option.

twistd calls the factory it is given with no arguments, so Twisted's own
C{twisted.logger.jsonFileLogObserver}, which needs the file to write to,
cannot be named there directly: C{--logger gateway.logs.jsonObserver} can.
"""

import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver


def jsonObserver() -> FileLogObserver:
    """
    Every log event as one JSON object per line on standard output (which
    C{twistd -n} and systemd's journal keep), with all its fields.

    No record separator is written: line-oriented tools (the journal, C{jq},
    log shippers) read the lines as they are, and
    C{twisted.logger.eventsFromJSONLogFile} reads them back too.
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
