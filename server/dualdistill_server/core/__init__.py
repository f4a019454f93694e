"""The service core shared by the HTTP and gRPC transports."""

from .api_keys import ANONYMOUS, ApiKeys
from .cache import ResultCache, sequence_key
from .limits import TenantLimits
from .service import GenerateResult, LogitsResult, TeacherService

__all__ = [
    "ANONYMOUS",
    "ApiKeys",
    "GenerateResult",
    "LogitsResult",
    "ResultCache",
    "TeacherService",
    "TenantLimits",
    "sequence_key",
]
