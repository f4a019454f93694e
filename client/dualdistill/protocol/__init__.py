"""The contract between the teacher service and its clients. Both sides import it; it imports neither.

    results.py         SequenceLogits: one sequence's rows, the unit computed, cached and shipped
    params.py          LogitsParams: the teacher parameters of a logits request (top_k, temperature, ...)
    formats.py         response format names and the binary content type, declared once
    wire/              the binary codec of `format: "binary"` / "binary-lossless" (docs/wire-format.md)
    tokenizer_hash.py  the canonical tokenizer hash of the handshake
    v1/                generated gRPC modules of protos/dualdistill/v1/teacher.proto (`make protos`)

Only numpy, zstandard and protobuf/grpc are needed here: no torch, no transformers, no server code.
"""
