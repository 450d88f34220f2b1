"""Errors a user can act on: each names the problem and the fix, and maps to an exit code."""

from __future__ import annotations


class SlimlineError(Exception):
    """Base error. ``problem`` says what is wrong, ``fix`` says what to do about it."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} (fix: {fix})")


class InputError(SlimlineError):
    """Bad user input: a path, an option, a config value."""

    exit_code = 2


class ModelLoadError(InputError):
    """A model could not be found, read or understood."""


class UnsupportedArchitectureError(ModelLoadError):
    """The model family is not described in ``slimline.models.arch``."""


class DataError(InputError):
    """Text or calibration data that is missing, empty, too short or not text."""


class NonFiniteError(InputError):
    """NaN or Inf where numbers must be finite: a model's weights, or a metric they produce."""


class ConfigError(InputError):
    """A technique config, recipe or target that does not validate."""


class IntegrityError(SlimlineError):
    """A file whose digest or signature does not verify: refused before anything is built."""

    exit_code = 3


class TargetError(SlimlineError):
    """Deployment targets that cannot all be met, or that contradict each other."""

    exit_code = 4


class RegistryError(SlimlineError):
    """The registry database is locked, corrupt, or asked for something it does not hold."""

    exit_code = 5


class TrainingError(SlimlineError):
    """A training run that cannot go on (NaN loss, a checkpoint from another run)."""

    exit_code = 6


class EngineError(SlimlineError):
    """An inference engine that is not installed, or that cannot load or run a model file."""

    exit_code = 7
