"""dualdistill: train small LLMs from a shared teacher service with Dual-level Preference Distillation."""

from dualdistill.results import SequenceLogits

__all__ = ["SequenceLogits"]
__version__ = "0.1.0"
