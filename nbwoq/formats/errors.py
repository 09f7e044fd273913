"""The one error type of the file formats and the command."""


class InputError(ValueError):
    """A source, an output or a setting cannot be used; the message says why.

    The command prints it as one ``nbwoq: error:`` line. It is raised before anything is
    written wherever the problem can be known in advance.
    """


def printable(name):
    """``name`` quoted for a message, with every control or non-printable character
    escaped (a name read from a file never reaches a terminal raw). Bytes that are not
    UTF-8 show as ``\\x..`` escapes."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "backslashreplace")
    return repr(str(name))
