"""The one exception type every user-facing check raises.

The CLI turns it (and ValueError / FileNotFoundError) into a one-line ``error: ...`` message and a
non-zero exit code, so a bad input never produces a traceback or a partial output file.
"""


class SaeRdpError(ValueError):
    """Bad input to a sae-rdp function or command; the message names the problem."""
