"""The service core shared by the HTTP and gRPC transports."""

from .cache import NoCache, ResultCache, sequence_key
from .service import GenerateResult, LogitsResult, TeacherService

__all__ = ["GenerateResult", "LogitsResult", "NoCache", "ResultCache", "TeacherService", "sequence_key"]
