"""The service's log: one line per record, whatever text from outside a record carries.

Names, a node's hostname, the last line of a failed role script: text that nodes and
users choose reaches log messages. A newline in it would forge a line of its own, and an
ANSI escape could hide or rewrite lines on the terminal that shows the log. Every record
of `corral serve` goes through `EscapeControlCharacters`, which writes such characters
as Python escapes (`\\n`, `\\x1b`); tracebacks, formatted apart, keep their lines.
"""

from __future__ import annotations

import logging
import re

# C0 and C1 controls, DEL, and the Unicode line separators and direction overrides
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def escape_controls(text: str) -> str:
    """`text` with every control character written as its Python escape."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class EscapeControlCharacters(logging.Filter):
    """Makes each record's message one printable line (see the module's docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_controls(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


def configure_service_logging(level: int = logging.INFO) -> None:
    """Log to stderr at `level`, every record escaped."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(EscapeControlCharacters())
    logging.basicConfig(level=level, handlers=[handler], force=True)
