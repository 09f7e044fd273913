"""The one error type of the file formats and the command."""


class InputError(ValueError):
    """A source, an output or a setting cannot be used; the message says why.

    The command prints it as one ``nbwoq: error:`` line. It is raised before anything is
    written wherever the problem can be known in advance.
    """
