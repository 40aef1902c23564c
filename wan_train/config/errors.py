"""What the entry points (train.py, generate.py) do with a user's mistake: one line naming the key, file or value,
exit status 2, no traceback (HYDRA_FULL_ERROR=1 shows it, as for Hydra's own errors)."""

import functools
import os
import sys

# raised with a message for the user: a bad value or key (ConfigError and CheckpointError are ValueErrors), a
# missing or unreadable file
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
EXIT_USAGE = 2


def full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(error: BaseException) -> str:
    return f"error: {' '.join(str(error).split())}"


def user_errors_in_one_line(function):
    """Decorate an entry point's main: a USER_ERRORS exception ends the process with one line on stderr."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except USER_ERRORS as error:
            if full_error():
                raise
            print(one_line(error), file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USAGE) from None

    return wrapper
