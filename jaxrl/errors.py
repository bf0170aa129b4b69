"""The project's one exception type.

Every error a user can cause (bad paths, bad configs, bad checkpoints, bad data) is raised as
`JaxrlError` with a message that says what was wrong and what to do; the CLI prints it on one line
and exits with status 2.
"""


class JaxrlError(Exception):
    """A user-facing error: the message is complete, no traceback is needed."""
