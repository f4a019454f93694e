"""A checkable task: small arithmetic word problems with known integer answers.

`make_queries(n, seed)` gives queries in the pairs input format (id, prompt, messages, answer); `verify`
scores a response 1.0 when its final number equals the answer, so the task plugs into the pair filter as
`--scorer verifier:dualdistill.tasks.arithmetic:verify`. Generation is a pure function of (seed, index,
difficulty): the same call gives the same problems on any machine, and problem i does not depend on n.

Difficulty (1..3) sets how many operations a problem chains and how large its numbers are:
1 = one addition or subtraction with numbers up to 20; 2 = two steps, numbers up to 50, with
multiplication; 3 = three steps, numbers up to 100, with exact division.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction

DIFFICULTIES = (1, 2, 3)
ANSWER_INSTRUCTION = "Answer with a single number."

_NAMES = ("Tom", "Ana", "Li", "Sara", "Omar", "Mia", "Ravi", "Zoe")
_ITEMS = ("apples", "pencils", "marbles", "stickers", "books", "coins", "shells", "cards")

# The final number of a text. A "-" is a sign only when it does not follow a word, a digit or a closing
# bracket, so "5-3" ends with 3 (a subtraction), while "is -3" ends with -3. Thousands separators
# ("1,234") and decimals ("7.0") are read; a sentence's full stop ("is 7.") is not a decimal point.
_NUMBER = re.compile(r"(?P<sign>(?<![\w)\].])-)?(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?")
# Explicit answer markers win over "the last number": \boxed{..} (maths style) and "#### .." (GSM8K style).
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_HASHES = re.compile(r"####\s*([^\n]*)")


def _problem(rng: random.Random, difficulty: int) -> tuple[str, int]:
    """One word problem and its integer answer (never negative: people do not own -3 apples)."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    top = {1: 20, 2: 50, 3: 100}[difficulty]
    a = rng.randint(1, top)
    b = rng.randint(1, top)
    if rng.random() < 0.5:
        text, value = f"{name} has {a} {item} and gets {b} more.", a + b
    else:
        a, b = max(a, b), min(a, b)
        text, value = f"{name} has {a} {item} and gives away {b}.", a - b
    if difficulty >= 2:
        k = rng.randint(2, 5)
        text += f" Then {name} ends up with {k} times as many."
        value *= k
    if difficulty >= 3:
        # Exact division: pick a divisor of the current value (value >= 0; 0 divides by anything).
        # Dividing by the multiplier of step 2 would just undo it, so it is avoided when another fits.
        divisors = [d for d in range(2, 10) if value % d == 0 and d != k] or [1]
        d = rng.choice(divisors)
        text += f" {name} shares them equally among {d} friends." if d > 1 else f" {name} keeps them all."
        value //= d
        text += f" How many {item} does each friend get?" if d > 1 else f" How many {item} are kept?"
    else:
        text += f" How many {item} does {name} have now?"
    return text, value


def make_problem(seed: int, index: int, difficulty: int = 1) -> dict:
    """Problem `index` of the stream for `seed`: {"id", "prompt", "messages", "answer"}."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    rng = random.Random(f"arithmetic/{seed}/{difficulty}/{index}")  # str seeds hash stably (sha512)
    text, answer = _problem(rng, difficulty)
    return query_record(f"arith-d{difficulty}-s{seed}-{index:06d}", text, answer)


def query_record(query_id: str, text: str, answer: int) -> dict:
    """A query in the pairs input format: the text plus the answer instruction, as one user message."""
    prompt = f"{text} {ANSWER_INSTRUCTION}"
    return {"id": query_id, "prompt": prompt, "messages": [{"role": "user", "content": prompt}], "answer": answer}


def make_queries(n: int, seed: int = 0, difficulty: int = 1) -> list[dict]:
    """`n` problems (ids unique per (seed, difficulty)); problem i is the same for every n > i."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [make_problem(seed, i, difficulty) for i in range(n)]


def _to_number(sign: str | None, integer: str, frac: str | None) -> int | Fraction:
    digits = integer.replace(",", "")
    value = Fraction(digits + (frac or ""))
    value = -value if sign else value
    return int(value) if value.denominator == 1 else value


def _last_number(text: str) -> int | Fraction | None:
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return _to_number(last.group("sign"), last.group("int"), last.group("frac"))


def extract_final_number(text: str) -> int | Fraction | None:
    """The response's final answer as an exact number, or None when it has no number.

    Order: the last `\\boxed{..}`, else the text after the last `####`, else the whole text; within the
    chosen span the last number counts. Integers come back as int, others as Fraction ("2.5" -> 5/2), so
    equality with an integer answer is exact ("7.0" == 7, "7.5" != 7).
    """
    boxed = _BOXED.findall(text)
    if boxed:
        found = _last_number(boxed[-1])
        if found is not None:
            return found
    hashes = _HASHES.findall(text)
    if hashes:
        found = _last_number(hashes[-1])
        if found is not None:
            return found
    return _last_number(text)


def verify(query: dict, response: str) -> float:
    """1.0 when the response's final number equals `query["answer"]`, else 0.0."""
    if "answer" not in query:
        raise ValueError(f"query {query.get('id')!r} has no 'answer'; the arithmetic verifier needs one")
    try:
        answer = Fraction(str(query["answer"]).strip().replace(",", ""))
    except ValueError:
        raise ValueError(f"query {query.get('id')!r}: answer {query['answer']!r} is not a number") from None
    found = extract_final_number(response)
    return 1.0 if found is not None and Fraction(found) == answer else 0.0
