"""Retention probes: prior capabilities that fine-tuning on a new task should not destroy.

Two tasks, both eval-only (``train`` is empty):

* ``retention`` (multiple choice, scored by log-likelihood of each choice; robust for a 135M model), 120 items:
    - ``capital``   (50): "What is the capital of France?" for well-known countries. Country names come from
      ``pycountry`` (LGPL-2.1-only; data from Debian iso-codes), with a few common-usage overrides; the capitals
      are a hand-written list in this file; the 3 distractors are other capitals from that list.
    - ``arithmetic`` (45): ``a + b`` for single digits 1 <= a <= b <= 9; the 3 wrong choices are nearby numbers.
    - ``fact``      (25): hand-written everyday facts ("How many days are in a week?").
* ``retention_if`` (generation), 21 IFEval-style instruction-following items, each scored with the verifiers of
  the ``if_verifiable`` package (Apache-2.0; IFEval's instruction checkers): correct iff every instruction
  passes in strict mode. The checkers used need no downloaded NLTK data. The all-lowercase / all-capitals
  checkers also require ``langdetect`` to call the text English; langdetect is seeded (0) before each check so
  the verdict is deterministic, but like IFEval itself it can misjudge short or all-caps text.

The items are written by this module, deterministically (:func:`build_retention_records`,
:func:`build_retention_if_records`), and shipped frozen as ``selfdistill/data/retention.jsonl`` and
``selfdistill/data/retention_if.jsonl`` (regenerate with ``python -m selfdistill.tasks.retention``; a test checks
that regenerating gives the same bytes). All hand-written items in this file are original to this project.

Each record: ``id``, ``category``, ``prompt`` (one user turn, a string), ``demonstration`` (a correct answer) and,
for multiple choice, ``choices`` + ``answer_index``; for instruction following, ``instruction_id_list`` +
``kwargs`` (IFEval's format). The lead measures base-model accuracy and keeps the items the base model gets
right: pass their ids as ``filter_ids``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterable

from selfdistill.tasks.base import Task, country_name, make_example
from selfdistill.tasks.scorers import exact_match

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MC_FILE = "retention.jsonl"
IF_FILE = "retention_if.jsonl"
SOURCE_AND_LICENSE_MC = ("Hand-written items original to selfdistill (Apache-2.0); country names from pycountry "
                         "(LGPL-2.1-only, data from Debian iso-codes)")
SOURCE_AND_LICENSE_IF = ("Hand-written IFEval-style items original to selfdistill (Apache-2.0); verified with the "
                         "if_verifiable package (Apache-2.0, IFEval instruction checkers)")
SEED = 0

# (ISO 3166 alpha-2, capital). Countries whose capital is well known; no contested or split capitals.
CAPITALS: list[tuple[str, str]] = [
    ("FR", "Paris"), ("DE", "Berlin"), ("IT", "Rome"), ("ES", "Madrid"), ("PT", "Lisbon"), ("GB", "London"),
    ("IE", "Dublin"), ("NL", "Amsterdam"), ("BE", "Brussels"), ("AT", "Vienna"), ("CH", "Bern"),
    ("SE", "Stockholm"), ("NO", "Oslo"), ("DK", "Copenhagen"), ("FI", "Helsinki"), ("IS", "Reykjavik"),
    ("PL", "Warsaw"), ("CZ", "Prague"), ("HU", "Budapest"), ("GR", "Athens"), ("RU", "Moscow"), ("UA", "Kyiv"),
    ("TR", "Ankara"), ("EG", "Cairo"), ("KE", "Nairobi"), ("NG", "Abuja"), ("MA", "Rabat"), ("JP", "Tokyo"),
    ("CN", "Beijing"), ("KR", "Seoul"), ("IN", "New Delhi"), ("TH", "Bangkok"), ("VN", "Hanoi"),
    ("ID", "Jakarta"), ("PH", "Manila"), ("AU", "Canberra"), ("NZ", "Wellington"), ("US", "Washington, D.C."),
    ("CA", "Ottawa"), ("MX", "Mexico City"), ("BR", "Brasília"), ("AR", "Buenos Aires"), ("CL", "Santiago"),
    ("PE", "Lima"), ("CU", "Havana"), ("SA", "Riyadh"), ("IR", "Tehran"), ("IQ", "Baghdad"),
    ("PK", "Islamabad"), ("RO", "Bucharest"),
]
# pycountry's official names where everyday usage differs.
NAME_OVERRIDES = {"RU": "Russia", "TR": "Turkey", "CZ": "the Czech Republic", "KR": "South Korea",
                  "VN": "Vietnam", "IR": "Iran", "GB": "the United Kingdom", "US": "the United States",
                  "NL": "the Netherlands", "PH": "the Philippines"}

# (id suffix, question, correct answer, wrong answers)
FACTS: list[tuple[str, str, str, list[str]]] = [
    ("week-days", "How many days are in a week?", "7", ["5", "10", "12"]),
    ("sky-color", "What color is the sky on a clear day?", "Blue", ["Green", "Red", "Purple"]),
    ("opposite-hot", 'What is the opposite of "hot"?', "Cold", ["Tall", "Fast", "Loud"]),
    ("cat-sound", 'Which animal says "meow"?', "A cat", ["A dog", "A cow", "A duck"]),
    ("spider-legs", "How many legs does a spider have?", "8", ["6", "4", "10"]),
    ("frozen-water", "What is frozen water called?", "Ice", ["Steam", "Sand", "Glass"]),
    ("home-planet", "Which planet do we live on?", "Earth", ["Mars", "Venus", "Jupiter"]),
    ("first-month", "What is the first month of the year?", "January", ["March", "June", "October"]),
    ("day-hours", "How many hours are in a day?", "24", ["12", "60", "100"]),
    ("largest-ocean", "Which is the largest ocean on Earth?", "The Pacific Ocean",
     ["The Indian Ocean", "The Arctic Ocean", "The Southern Ocean"]),
    ("bees-make", "What do bees make?", "Honey", ["Milk", "Silk", "Wool"]),
    ("breathe-gas", "Which gas do people need to breathe to stay alive?", "Oxygen", ["Helium", "Neon", "Argon"]),
    ("boiling-point", "At what temperature in degrees Celsius does water boil at sea level?", "100",
     ["50", "0", "30"]),
    ("three-sides", "Which shape has three sides?", "A triangle", ["A square", "A circle", "A hexagon"]),
    ("banana-color", "What color is a ripe banana?", "Yellow", ["Blue", "Black", "Purple"]),
    ("romeo-author", 'Who wrote "Romeo and Juliet"?', "William Shakespeare",
     ["Charles Dickens", "Jane Austen", "Mark Twain"]),
    ("largest-planet", "What is the largest planet in the solar system?", "Jupiter", ["Mercury", "Mars", "Venus"]),
    ("hour-minutes", "How many minutes are in an hour?", "60", ["30", "100", "24"]),
    ("water-formula", "What is the chemical formula of water?", "H2O", ["CO2", "NaCl", "O3"]),
    ("jungle-king", "Which animal is called the king of the jungle?", "The lion",
     ["The rabbit", "The sheep", "The mouse"]),
    ("opposite-up", 'What is the opposite of "up"?', "Down", ["Left", "Over", "Inside"]),
    ("continents", "How many continents are there on Earth?", "7", ["3", "10", "12"]),
    ("baby-dog", "What is a baby dog called?", "A puppy", ["A kitten", "A calf", "A foal"]),
    ("nearest-star", "What is the star closest to the Earth?", "The Sun", ["Sirius", "Polaris", "Betelgeuse"]),
    ("pyramids", "In which country are the pyramids of Giza?", "Egypt", ["Peru", "China", "Mexico"]),
]

CAPITAL_SUFFIX = " Answer with just the name of the city."
ARITH_SUFFIX = " Answer with just the number."
FACT_SUFFIX = " Answer in a few words."

# Instruction-following items: (id suffix, prompt, instruction_id_list, kwargs list, demonstration).
IF_ITEMS: list[tuple[str, str, list[str], list[dict[str, Any]], str]] = [
    ("lowercase-ocean",
     "Describe the ocean in two sentences. Your entire response should be in English and in all lowercase "
     "letters, with no capital letters at all.",
     ["change_case:english_lowercase"], [{}],
     "the ocean is a vast body of salt water that covers most of our planet. it is home to fish, whales and "
     "many other living things."),
    ("keyword-leaves", 'Write one sentence about autumn that includes the word "leaves".',
     ["keywords:existence"], [{"keywords": ["leaves"]}],
     "In autumn the leaves turn red and gold before they fall."),
    ("fewer-words-computer", "Explain what a computer is in fewer than 20 words.",
     ["length_constraints:number_words"], [{"num_words": 20, "relation": "less than"}],
     "A computer is a machine that stores and processes information by following instructions."),
    ("no-comma-dogs", "Tell me about dogs in two sentences. Do not use any commas in your response.",
     ["punctuation:no_comma"], [{}],
     "Dogs are loyal animals that love to play. They enjoy long walks with their owners."),
    ("end-phrase-greeting",
     'Write a short greeting for a friend. End your response with the exact phrase "See you soon!" and '
     "nothing after it.",
     ["startend:end_checker"], [{"end_phrase": "See you soon!"}],
     "Hi Sam, I hope you are having a wonderful week. See you soon!"),
    ("title-moon",
     "Write a two-line poem about the moon. Give it a title wrapped in double angular brackets, like "
     "<<my title>>.",
     ["detectable_format:title"], [{}],
     "<<Moonlight>>\nThe moon is bright tonight,\nit fills the quiet sky with light."),
    ("quotes-color", "What is your favorite color? Wrap your entire response in double quotation marks.",
     ["startend:quotation"], [{}],
     '"My favorite color is blue because it reminds me of the sea."'),
    ("bullets-health",
     "Give three tips for staying healthy. Use exactly 3 markdown bullet points, like:\n* first tip",
     ["detectable_format:number_bullet_lists"], [{"num_bullets": 3}],
     "* Drink plenty of water.\n* Sleep for at least seven hours.\n* Walk outside every day."),
    ("postscript-note",
     "Write a short thank-you note to a neighbor. At the end, add a postscript that starts with P.S.",
     ["detectable_content:postscript"], [{"postscript_marker": "P.S."}],
     "Hello Maria,\nThank you for the lovely flowers you left at my door.\nP.S. Your garden looks wonderful "
     "this spring."),
    ("forbidden-hot", 'Describe a sunny summer day without using the word "hot".',
     ["keywords:forbidden_words"], [{"forbidden_words": ["hot"]}],
     "The sky is clear, the sun is bright and warm, and children play in the park."),
    ("frequency-blue", 'Write one sentence about the sea in which the word "blue" appears at least 2 times.',
     ["keywords:frequency"], [{"keyword": "blue", "frequency": 2, "relation": "at least"}],
     "The blue sea stretches out to meet the blue sky."),
    ("capitals-season",
     "What is your favorite season and why? Your entire response should be in English and in capital letters "
     "only.",
     ["change_case:english_capital"], [{}],
     "I LIKE SUMMER THE MOST BECAUSE I CAN SWIM IN THE SEA WITH MY FRIENDS."),
    ("options-water",
     'Is the sea salty? Answer with one of the following options: "My answer is yes.", "My answer is no.", '
     '"My answer is maybe."',
     ["detectable_format:constrained_response"], [{}],
     "My answer is yes."),
    ("placeholders-letter",
     "Write a short invitation template with at least 2 placeholders in square brackets, such as [name].",
     ["detectable_content:number_placeholders"], [{"num_placeholders": 2}],
     "Dear [name],\nYou are invited to my party on [date] at [place]. I hope you can come!"),
    ("highlight-morning",
     "Describe your morning routine. Highlight at least 2 parts with markdown, i.e. *highlighted part*.",
     ["detectable_format:number_highlighted_sections"], [{"num_highlights": 2}],
     "I wake up at seven and *drink a glass of water*. Then I *eat breakfast with my family* and walk to "
     "work."),
    ("paragraphs-city",
     "Write about a big city in exactly 2 paragraphs. Separate the paragraphs with the markdown divider ***.",
     ["length_constraints:number_paragraphs"], [{"num_paragraphs": 2}],
     "During the day the city is busy and loud, with cars, buses and people everywhere.\n***\nAt night the "
     "streets grow quiet and the lights of the tall buildings shine over the river."),
    ("letter-a-banana",
     'Write one sentence about a banana in which the letter "a" appears at least 5 times.',
     ["keywords:letter_frequency"], [{"letter": "a", "let_frequency": 5, "let_relation": "at least"}],
     "A banana is a sweet and tasty snack."),
    ("json-person",
     "Invent a person and give their name and age. Your entire output should be in JSON format.",
     ["detectable_format:json_format"], [{}],
     '{"name": "Alice", "age": 30}'),
    ("more-words-reading", "Write at least 30 words about why reading books is useful.",
     ["length_constraints:number_words"], [{"num_words": 30, "relation": "at least"}],
     "Reading books is useful because it teaches us new words and ideas. It helps us understand people who "
     "live in other places and times. Reading also improves focus and memory, and it can be a calm way to "
     "relax at the end of a long day."),
    ("lowercase-keyword-rain",
     'Write one sentence about rain. Use only lowercase letters and include the word "umbrella".',
     ["change_case:english_lowercase", "keywords:existence"], [{}, {"keywords": ["umbrella"]}],
     "when it rains i always carry my umbrella so that i stay dry on the way to school."),
    ("short-no-comma-cat", "Describe a cat in fewer than 15 words and without using any commas.",
     ["length_constraints:number_words", "punctuation:no_comma"],
     [{"num_words": 15, "relation": "less than"}, {}],
     "A cat is a small furry pet that likes to sleep in the sun."),
]


# ----------------------------------------------------------------------------------------------------------------
# building the frozen files
# ----------------------------------------------------------------------------------------------------------------


def _mc_record(rid: str, category: str, prompt: str, correct: str, wrong: list[str],
               rng: random.Random) -> dict[str, Any]:
    choices = [correct, *wrong]
    rng.shuffle(choices)
    return {"id": rid, "category": category, "prompt": prompt, "demonstration": correct,
            "choices": choices, "answer_index": choices.index(correct)}


def build_retention_records(seed: int = SEED) -> list[dict[str, Any]]:
    """The multiple-choice retention items, deterministic for a given seed (120 items)."""
    rng = random.Random(seed)
    out = []
    caps = [c for _, c in CAPITALS]
    for code, capital in CAPITALS:
        wrong = rng.sample([c for c in caps if c != capital], 3)
        prompt = f"What is the capital of {country_name(code, NAME_OVERRIDES)}?{CAPITAL_SUFFIX}"
        out.append(_mc_record(f"capital-{code}", "capital", prompt, capital, wrong, rng))
    for a in range(1, 10):
        for b in range(a, 10):
            s = a + b
            wrong = rng.sample([n for n in (s - 2, s - 1, s + 1, s + 2) if n >= 0], 3)
            out.append(_mc_record(f"add-{a}-{b}", "arithmetic", f"What is {a} + {b}?{ARITH_SUFFIX}", str(s),
                                  [str(w) for w in wrong], rng))
    for suffix, question, correct, wrong in FACTS:
        out.append(_mc_record(f"fact-{suffix}", "fact", f"{question}{FACT_SUFFIX}", correct, list(wrong), rng))
    return out


def build_retention_if_records() -> list[dict[str, Any]]:
    """The instruction-following items (21)."""
    return [{"id": f"if-{suffix}", "category": "instruction_following", "prompt": prompt, "demonstration": demo,
             "instruction_id_list": list(ids), "kwargs": [dict(k) for k in kwargs]}
            for suffix, prompt, ids, kwargs, demo in IF_ITEMS]


def dump_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_retention_files(out_dir: str | Path = DATA_DIR) -> list[Path]:
    """(Re)write retention.jsonl and retention_if.jsonl into `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, records in ((MC_FILE, build_retention_records()), (IF_FILE, build_retention_if_records())):
        p = out_dir / name
        p.write_text(dump_jsonl(records), encoding="utf-8")
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------------


def read_records(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _to_example(rec: dict[str, Any], fname: str, lineno: int) -> Any:
    extra = {k: v for k, v in rec.items() if k not in ("prompt", "demonstration")}
    return make_example(prompt=[{"role": "user", "content": rec["prompt"]}], demonstration=rec["demonstration"],
                        extra=extra, origin=f"{fname}:{lineno}")


def _filter(records: list[dict[str, Any]], filter_ids: Iterable[str] | None, fname: str) -> list[dict[str, Any]]:
    if filter_ids is None:
        return records
    keep = list(dict.fromkeys(filter_ids))
    known = {r["id"] for r in records}
    unknown = [i for i in keep if i not in known]
    if unknown:
        raise ValueError(f"filter_ids not in {fname}: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    keep_set = set(keep)
    return [r for r in records if r["id"] in keep_set]


def mc_generation_score(output: str, example: Any) -> bool:
    """Generated-text fallback for multiple-choice items: exact match with the correct choice."""
    return exact_match(output, example.extra["choices"][example.extra["answer_index"]])


def load_task(filter_ids: Iterable[str] | None = None, categories: Iterable[str] | None = None,
              path: str | Path | None = None) -> Task:
    """The multiple-choice retention suite (eval-only). `filter_ids`: keep only these item ids (unknown ids raise);
    `categories`: keep only these of ``capital``, ``arithmetic``, ``fact``."""
    p = Path(path) if path is not None else DATA_DIR / MC_FILE
    numbered = list(enumerate(read_records(p), start=1))
    records = _filter([r for _, r in numbered], filter_ids, p.name)
    if categories is not None:
        cats = set(categories)
        unknown = cats - {"capital", "arithmetic", "fact"}
        if unknown:
            raise ValueError(f"unknown retention categories {sorted(unknown)}; known: capital, arithmetic, fact")
        records = [r for r in records if r["category"] in cats]
    line_of = {r["id"]: n for n, r in numbered}
    test = [_to_example(r, p.name, line_of[r["id"]]) for r in records]
    return Task(
        name="retention",
        description=("Prior-capability probes scored by log-likelihood multiple choice: capitals of well-known "
                     "countries, single-digit additions, everyday facts. Eval-only."),
        train=[], test=test, scorer=mc_generation_score, kind="multiple_choice",
        source_and_license=SOURCE_AND_LICENSE_MC, max_new_tokens=16,
        info={"n_test": len(test), "filtered": filter_ids is not None,
              "by_category": {c: sum(r["category"] == c for r in records) for c in ("capital", "arithmetic", "fact")}},
    )


def if_verify(output: str, instruction_id_list: list[str], kwargs: list[dict[str, Any]], prompt: str = "") -> bool:
    """True iff `output` passes every IFEval instruction in strict mode (if_verifiable's checkers)."""
    if not isinstance(output, str) or not output.strip():
        return False
    from langdetect import DetectorFactory  # the lowercase/capital checkers call langdetect: make it deterministic
    from if_verifiable import IFEvalSample, evaluate_output_for_sample  # on use: only the retention_if task

    DetectorFactory.seed = 0
    sample = IFEvalSample(key=0, prompt=prompt, instruction_id_list=list(instruction_id_list),
                          kwargs=[dict(k) for k in kwargs])
    results, scores = evaluate_output_for_sample("ifeval", sample, output)
    return len(results) == len(instruction_id_list) and scores.binary_strict == 1.0


def if_score(output: str, example: Any) -> bool:
    return if_verify(output, example.extra["instruction_id_list"], example.extra["kwargs"],
                     example.prompt[-1]["content"])


def load_if_task(filter_ids: Iterable[str] | None = None, path: str | Path | None = None) -> Task:
    """The instruction-following retention items (generation, eval-only)."""
    p = Path(path) if path is not None else DATA_DIR / IF_FILE
    numbered = list(enumerate(read_records(p), start=1))
    records = _filter([r for _, r in numbered], filter_ids, p.name)
    line_of = {r["id"]: n for n, r in numbered}
    test = [_to_example(r, p.name, line_of[r["id"]]) for r in records]
    return Task(
        name="retention_if",
        description=("IFEval-style instruction following (lowercase, keywords, word limits, formats), verified by "
                     "if_verifiable in strict mode; every instruction must pass. Eval-only."),
        train=[], test=test, scorer=if_score, kind="generate", source_and_license=SOURCE_AND_LICENSE_IF,
        max_new_tokens=160, info={"n_test": len(test), "filtered": filter_ids is not None},
    )


if __name__ == "__main__":  # python -m selfdistill.tasks.retention
    for written in write_retention_files():
        print(written)
