"""The small exception hierarchy of mixllm.

Every error the library raises on purpose is a `MixLLMError`, so callers (the CLI, the flows, the service) can tell
"the input or state is wrong, here is what to do" from a bug. Wrap lower-level errors with `raise ... from e`.
"""


class MixLLMError(Exception):
    """Base class of every error mixllm raises on purpose."""


class ConfigError(MixLLMError):
    """A configuration value, file or environment variable is invalid."""


class ContractError(MixLLMError):
    """Data does not satisfy a data contract (interaction log, feedback) or a file cannot be read as one."""


class CatalogueError(MixLLMError):
    """The LLM catalogue is invalid, or data names an LLM the catalogue does not have."""


class UnknownModelError(CatalogueError):
    """A model name is not in the LLM catalogue; the message names the entry to add."""


class RoutingError(MixLLMError):
    """A routing request cannot be answered (no allowed model, every candidate over budget, bad request)."""


class ArtifactError(MixLLMError):
    """A router artifact is missing, incomplete, or was written by an incompatible version."""


class TrainingError(MixLLMError):
    """Training cannot proceed (not enough rows, a single class where two are needed, ...)."""


class RegistryError(MixLLMError):
    """The model registry (MLflow) is unreachable or does not hold the requested version/alias."""


class StoreError(MixLLMError):
    """The interaction/feedback store cannot be opened or written."""
