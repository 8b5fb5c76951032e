"""The one exception type every user-facing check raises.

The CLI turns it (and ValueError / FileNotFoundError) into a one-line ``error: ...`` message and a
non-zero exit code, so a bad input never produces a traceback or a partial output file.
"""


class SaeRdpError(ValueError):
    """Bad input to a sae-rdp function or command; the message names the problem."""


def exc_line(exc: BaseException, limit: int | None = 160) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters), or its type's name when the message is
    empty: how a check quotes the error it turns into one ``error: ...`` line."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit] if limit is not None else line
