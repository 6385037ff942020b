"""Exceptions that the CLI turns into a one-line message and a non-zero exit."""


class SentexError(Exception):
    """A problem the user can fix (bad file, bad checkpoint, bad setting); never a bug."""


class DataError(SentexError):
    """An input file that cannot be used; the message lists every problem found."""


class CheckpointError(SentexError):
    """A checkpoint that is missing, truncated, or belongs to another model."""


class NonFiniteLossError(SentexError):
    """Training produced a NaN/inf loss; continuing would only train on garbage."""
