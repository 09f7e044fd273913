"""The one error type of the file formats and the command, and how a name read from a
file is quoted in its messages."""


class InputError(ValueError):
    """A source, an output or a setting cannot be used; the message says why.

    The command prints it as one ``nbwoq: error:`` line. It is raised before anything is
    written wherever the problem can be known in advance.
    """


def printable(name):
    """``name`` quoted for a message, with every control or non-printable character
    escaped (a name read from a file never reaches a terminal raw). Bytes that are not
    UTF-8 show as ``\\x..`` escapes.

    Every message that quotes a name read from a file goes through this: control
    characters (an escape sequence, a newline that forges a second message line), other
    non-printable characters and lone surrogates come out escaped, as ``repr`` writes
    them. A ``str`` is quoted as ``repr`` quotes it (what ``{name!r}`` gave before).

    Examples
    --------
    >>> print(printable("model.layers.0.weight"))
    'model.layers.0.weight'
    >>> print(printable("w\\x1b[2J\\n"))
    'w\\x1b[2J\\n'
    >>> print(printable(b"w\\xff"))
    'w\\\\xff'
    """
    if isinstance(name, (bytes, bytearray, memoryview)):
        name = bytes(name).decode("utf-8", "backslashreplace")
    return repr(str(name))
