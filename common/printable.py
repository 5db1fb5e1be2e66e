"""Text a peer chose (an xDS node id, a NACK's reason) made safe to show in a log, the admin API or a terminal."""

from __future__ import annotations

# Enough for a node id (a pod or host name, a UUID), a user agent, or the gist of a NACK's reason; a
# peer's text longer than this is cut, so what it writes cannot fill a log line or an operator's screen.
SHOWN_LIMIT = 256
_CUT = "..."


def printable(text: str, limit: int = SHOWN_LIMIT) -> str:
    """`text` cut to at most `limit` characters ("..." ends a cut), each control or format character
    replaced by "?", so no escape sequence, line break or bidi override of a peer reaches a reader."""
    if len(text) > limit:
        text = text[:max(0, limit - len(_CUT))] + _CUT[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)
