"""Call the dualdistill teacher's HTTP API with plain httpx (no dualdistill import): the JSON format.

    python examples/python_client.py --url http://127.0.0.1:8000 --text "The quick brown fox"

1. GET /v1/models: what is served (name, vocab size, fingerprint).
2. POST /v1/generate: greedy completion of --text; the answer also carries the prompt's token ids,
   so the server's tokenizer is the only one involved.
3. POST /v1/logits: the teacher's top-k distribution at every completion position (start = prompt length),
   printed as a table: actual token, its logprob, top-k ids with probabilities, tail mass outside the top-k.

Positions i in [start, T) get p(. | x[:i]); a null logprob in the JSON is -inf (docs/api.md).
The key, when the server has keys, comes from --api-key or DUALDISTILL_API_KEY.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import httpx


def check(response: httpx.Response) -> dict:
    """The JSON body, or exit with the service's error message (body {"error": {"code", "message"}})."""
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            detail = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            detail = response.text[:500]
        sys.exit(f"{response.request.method} {response.request.url.path} -> {response.status_code} {detail}")
    return response.json()


def as_logprob(value: float | None) -> float:
    return -math.inf if value is None else float(value)


def logits_table(token_ids: list[int], start: int, result: dict) -> str:
    """One line per position i in [start, T): x[i], log p(x[i]), log tail, top-k as id:probability."""
    lines = ["position  token  logprob     tail  top-k (id:prob)"]
    for r, (ids, logprobs) in enumerate(zip(result["top_ids"], result["top_logprobs"], strict=True)):
        position = start + r
        top = " ".join(f"{i}:{math.exp(as_logprob(lp)):.3f}" for i, lp in zip(ids, logprobs, strict=True))
        lines.append(
            f"{position:8d}  {token_ids[position]:5d}  {as_logprob(result['token_logprobs'][r]):7.3f}  "
            f"{as_logprob(result['tail_logprobs'][r]):7.3f}  {top}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TEACHER_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("DUALDISTILL_API_KEY"))
    parser.add_argument("--model", help="model name (default: the first one listed)")
    parser.add_argument("--text", default="The quick brown fox")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)

    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as http:
        models = check(http.get("/v1/models"))["models"]
        for m in models:
            print(
                f"model {m['name']}: vocab {m['vocab_size']}, dtype {m['dtype']}, fingerprint {m['fingerprint'][:12]}"
            )
        if not models:
            sys.exit("the server lists no models")
        model = args.model or models[0]["name"]

        generated = check(
            http.post(
                "/v1/generate",
                json={
                    "model": model,
                    "prompts": [{"text": args.text}],
                    "max_new_tokens": args.max_new_tokens,
                    "temperature": 0.0,
                },
            )
        )
        completion = generated["completions"][0]
        print(f"\ncompletion ({completion['finish_reason']}): {args.text!r} + {completion['text']!r}")
        token_ids = completion["prompt_token_ids"] + completion["token_ids"]
        start = len(completion["prompt_token_ids"])
        if start >= len(token_ids):
            sys.exit("the completion is empty; nothing to score")

        logits = check(
            http.post(
                "/v1/logits",
                json={
                    "model": model,
                    "sequences": [{"token_ids": token_ids, "start": start}],
                    "top_k": args.top_k,
                    "format": "json",
                    "request_id": "python-example",
                },
            )
        )
        print(f"\nteacher logits ({logits['model']}, request {logits['request_id']}):")
        print(logits_table(token_ids, start, logits["results"][0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
