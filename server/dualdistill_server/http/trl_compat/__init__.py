"""The dialect of `trl vllm-serve`: POST /get_sequence_logprobs/ and GET /health/, byte-compatible with what
TRL's `VLLMClient.get_sequence_logprobs` sends and decodes (sequence_logprobs.py), from the same service."""
