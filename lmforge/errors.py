"""Errors lmforge raises for bad input: each names the argument or file and what was expected."""


class LMForgeError(Exception):
    """Base class: a problem with what the user asked for, reported without a deep traceback."""


class ConfigError(LMForgeError, ValueError):
    """An option or argument has a value outside what it accepts; `option` names it when the
    error is about one option (a server maps it to the request field at fault)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


class CheckpointError(LMForgeError):
    """A model file or directory is missing, truncated, corrupted or of an unsupported kind."""


class UnknownModelError(LMForgeError, KeyError):
    """A model name that is neither a known name nor an existing path."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
