"""Typed errors: each carries the exit code the CLI returns and a hint saying what to do.

The CLI prints ``error: <message> (<hint>)`` on one line and exits with ``exit_code``; nothing
below the CLI prints tracebacks or calls ``sys.exit``.
"""


from __future__ import annotations


class TdxImageError(Exception):
    """Base of every error the user should see as one line."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "", details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or {}  # merged into the ``--json`` failure document

    def relocate(self, old: str, new: str) -> None:
        """Paths below ``old`` named in the message now live below ``new`` (a failed build's
        files move from its staging directory to ``OUT.failed/``)."""
        self.message, self.hint = self.message.replace(old, new), self.hint.replace(old, new)

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class CheckFailed(TdxImageError):
    """Validation or boot test ran and the image did not pass."""

    exit_code = 1


class InputError(TdxImageError):
    """Bad user input: unknown target, unreadable file, bad option value, unreadable image."""

    exit_code = 2


class HostError(TdxImageError):
    """The build host cannot do this: not root, a tool missing, too little disk, no KVM/TDX."""

    exit_code = 3


class RepositoryError(TdxImageError):
    """A package repository is unreachable or rejected the request."""

    exit_code = 4


class CredentialsError(TdxImageError):
    """Repository credentials are missing or were refused."""

    exit_code = 5


class BuildError(TdxImageError):
    """KIWI ran and failed."""

    exit_code = 6


class Interrupted(TdxImageError):
    """Stopped by SIGINT, SIGTERM or SIGHUP; everything started was stopped and cleaned up."""

    exit_code = 130
