"""Errors a user can cause and fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (missing data, unknown name, malformed option).

    The CLI catches it, prints ``error: <message>`` and exits with status 2, without a
    traceback and without writing any partial result.
    """


class DatasetLayoutError(UserError):
    """A dataset folder does not match the official layout; the message names what is wrong."""


class DownloadError(UserError):
    """A download failed (HTTP error, checksum mismatch, no space); the message says which."""


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the message names the epoch and step."""


def check_choice(name: str, value, choices) -> None:
    """The one "must be one of" rule for a setting with a fixed set of values: a
    :class:`UserError` naming the setting, the valid values and what was given."""
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
