"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad option, missing file or package, unsupported model).

    The message says what was wrong and how to fix it.
    """

    exit_code = 2


class MissingPackageError(UserError):
    """An optional package is needed; the message carries the install line."""

    def __init__(self, package: str, purpose: str, install: str | None = None):
        install = install or f"pip install {package}"
        super().__init__(f"{purpose} needs the package '{package}', which is not installed. Install it with: {install}")


class PruningError(RuntimeError):
    """A candidate could not be pruned or scored (non-finite scores, weights or objective value;
    numerical failure). In a search this fails one trial, never the study; on the command line it
    is reported in one line."""

    exit_code = 3
