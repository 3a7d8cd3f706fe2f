"""The one error type users see: a single line, no traceback (unless ``--debug``)."""


class GjpError(Exception):
    """A problem with the user's input or environment, explained in one line.

    ``str(err)`` is printed as ``gjp: error: <message>``; by convention the message starts
    with the offending path when there is one (``tiles/: no tile group files``).
    """
