"""vLLM's OpenAI-compatible dialect (`POST /v1/completions`, `GET /health`, the OpenAI shape of `/v1/models`),
served from the same TeacherService as our own API: schemas.py (the request as vLLM reads it),
completions.py (the request's semantics), logprobs.py (vLLM's logprob shapes), tokens.py (token texts),
routes.py (the FastAPI routes)."""
