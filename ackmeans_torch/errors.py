"""The one exception type for bad user input.

Library code raises :class:`InputError` (a ``ValueError``) with a one-line message that names the
file or parameter and says what to do, e.g.
``InputError(f"{path}: image 12 of 10 requested; the stack has only 10 images")``.
The CLI (``ackmeans_torch/cli``) turns any ``ValueError``/``OSError`` raised while a command runs
into that one line on stderr and exit code 2; every other exception is a bug and keeps its
traceback.
"""


class InputError(ValueError):
    """Bad user input (a file or a parameter); the message is one line and says what to do."""
