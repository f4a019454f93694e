"""Completions through vLLM: one vLLM request per (prompt, sample), seeded like the hf engine's rows.

Each row (prompt p, sample j) is its own request with n = 1 and seed = completion_seed(seed, prompt, j)
(models/generation.py), so a completion depends on (seed, prompt, j) only, not on the other prompts of the
request or on what else the engine batches with it. The random streams differ from the hf engine's (vLLM
draws with its own sampler), so the two engines agree in distribution, not token for token; greedy
(temperature 0) agrees token for token up to float rounding of near-ties.

Budgets and stops follow the hf engine: at most min(max_new_tokens, max_seq_len - len(prompt)) tokens;
"stop" when a stop id (the model's end tokens) was generated, which is kept as the last token, else
"length".
"""

from __future__ import annotations

from typing import Any

from dualdistill_server.models.generation import completion_seed

_FINISH = {"stop": "stop", "length": "length"}


def row_params(*, budget: int, temperature: float, top_p: float, seed: int, stop_ids: set[int]) -> Any:
    """SamplingParams of one completion row (token ids only, the final output only)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    greedy = temperature == 0.0
    return SamplingParams(
        n=1,
        max_tokens=budget,
        temperature=0.0 if greedy else float(temperature),
        top_p=1.0 if greedy else float(top_p),
        top_k=0,  # 0 = no top-k truncation (-1 in older vLLM releases)
        seed=None if greedy else seed,
        stop_token_ids=sorted(stop_ids),
        detokenize=False,
        skip_special_tokens=True,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def plan_rows(prompts: list[list[int]], n: int, seed: int, max_new_tokens: int, max_seq_len: int):
    """[(prompt_index, budget, row_seed)] in (prompt, sample) order."""
    rows = []
    for p, prompt in enumerate(prompts):
        if not 1 <= len(prompt) < max_seq_len:
            raise ValueError(f"prompts[{p}] has {len(prompt)} tokens; it needs 1 to {max_seq_len - 1}")
        budget = min(max_new_tokens, max_seq_len - len(prompt))
        rows.extend((p, budget, completion_seed(seed, prompt, j)) for j in range(n))
    return rows


def finished_row(output: Any, stop_ids: set[int]) -> tuple[list[int], str]:
    """(generated ids, finish_reason) of a finished single-sample RequestOutput."""
    completion = output.outputs[0]
    ids = [int(t) for t in completion.token_ids]
    if completion.finish_reason not in _FINISH:  # "abort" and the like: an engine-side failure
        raise RuntimeError(f"vLLM ended a completion with finish_reason {completion.finish_reason!r}")
    reason = "stop" if ids and ids[-1] in stop_ids else "length"
    return ids, reason
