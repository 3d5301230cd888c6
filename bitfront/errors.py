"""Errors a user can cause. The CLI prints them in one line and exits non-zero."""


class BitfrontError(Exception):
    """Base class: a problem with the user's input, not a bug in bitfront."""


class UnknownModelError(BitfrontError):
    """A model name that is neither known, a local path, nor a reachable hub id."""


class CheckpointError(BitfrontError):
    """A checkpoint that cannot be loaded: missing files, wrong or missing tensors."""


class DataError(BitfrontError):
    """A benchmark or corpus file that is missing or malformed."""


class PlanError(BitfrontError):
    """A bit plan that does not fit the model: unknown layers, unsupported bits, gaps."""


class NoPlanError(BitfrontError):
    """No plan meets the budget (the CLI exits 3)."""
