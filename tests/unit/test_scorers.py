"""Hand-made cases for the pure scorers in selfdistill.tasks.scorers (no model, no data files)."""

from __future__ import annotations

import pytest

from selfdistill.tasks.scorers import (
    currency_code_match,
    exact_match,
    extract_first_call,
    function_call_match,
    normalize_answer,
    paper_science_correct,
    paper_science_extract,
    paper_tooluse_correct,
    parse_call,
    regex_match,
    render_reference_call,
    standardize_string,
)

# ----------------------------------------------------------------------------------------------------------------
# exact_match
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", [
    "Paris", "paris", "  Paris.  ", "PARIS!", '"Paris"', "**Paris**", "The answer is Paris.", "Answer: Paris",
    "answer - paris", "Final answer: Paris", "Paris. It is the capital of France.", "Paris, of course.",
    "Paris\nThe capital of France is a big city.", "\n\nParis\n",
])
def test_exact_match_right(output):
    assert exact_match(output, "Paris")


@pytest.mark.parametrize("output", [
    "Paris is the capital of France.",  # the answer is not on its own
    "The capital of France is Paris.",  # answer at the end of a sentence
    "London", "Pari", "Parisian", "Paris Hilton", "I think it might be Paris or London",
    "The capital is\nParis",  # on the second line
    "", "   ", "\n",
])
def test_exact_match_wrong_and_near_misses(output):
    assert not exact_match(output, "Paris")


def test_exact_match_multiword_and_numbers():
    assert exact_match("New York", "new york")
    assert exact_match("New York.", "New York")
    assert not exact_match("New York City", "New York")
    assert exact_match("Paris, France. Lovely.", "Paris, France")
    assert exact_match("Answer: Paris, France.", "Paris, France")
    assert exact_match("19", "19")
    assert not exact_match("12 + 7 = 19", "12")
    assert not exact_match("190", "19")
    assert exact_match("3.5, since 7/2 = 3.5", "3.5")
    assert not exact_match("3.5 is the answer", "3")
    assert exact_match("1,000", "1,000")
    assert not exact_match("1,000", "1")


def test_exact_match_bad_inputs():
    assert not exact_match(None, "Paris")  # type: ignore[arg-type]
    assert not exact_match("Paris", "")
    assert not exact_match("...", "...")  # a reference that normalises to nothing never matches
    assert not exact_match("Answers vary", "vary")  # "Answers" is not the "Answer" marker


def test_normalize_answer():
    assert normalize_answer('  The answer is: "New   York".  ') == "new york"
    assert normalize_answer("Answer") == "answer"  # a bare marker is kept, not emptied


# ----------------------------------------------------------------------------------------------------------------
# regex_match
# ----------------------------------------------------------------------------------------------------------------


def test_regex_match():
    assert regex_match("The code is MGA.", r"\bMGA\b")
    assert not regex_match("The code is MGAX.", r"\bMGA\b")
    assert regex_match("2024-01-05", r"^\d{4}-\d{2}-\d{2}$")
    assert not regex_match("on 2024-01-05", r"^\d{4}-\d{2}-\d{2}$")
    assert not regex_match("", r"\w")
    assert not regex_match(None, r"\w")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        regex_match("x", "(")


# ----------------------------------------------------------------------------------------------------------------
# function_call_match (BFCL style)
# ----------------------------------------------------------------------------------------------------------------

TRI = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]
HYPOT = [{"math.hypot": {"x": [4], "y": [5], "z": ["", 0]}}]
EMIS = [{"calculate_emissions": {"distance": [12000], "fuel_type": ["gas"], "fuel_efficiency": ["", 25.0],
                                 "efficiency_reduction": [0, ""]}}]
NESTED = [{"paint_requirement.calculate": {"area": [{"width": [20], "height": [12]}], "paint_coverage": [350],
                                           "exclusion": [{"type": ["window"], "area": [15]}]}}]
LIST_OF_DICTS = [{"database.query": {"table": ["user"], "conditions": [[
    {"field": ["age"], "operation": [">"], "value": ["25"]},
    {"field": ["job"], "operation": ["="], "value": ["engineer"]}]]}}]
STR = [{"get_weather": {"city": ["New York, NY", "New York"], "unit": ["celsius", ""], "detailed": [False, ""]}}]


@pytest.mark.parametrize("output", [
    "calculate_triangle_area(base=10, height=5)",
    "calculate_triangle_area(base=10, height=5, unit='units')",
    "calculate_triangle_area(height=5, base=10)",
    "```python\ncalculate_triangle_area(base=10, height=5)\n```",
    "```\ncalculate_triangle_area(base=10, height=5)\n```\nThis computes the area.",
    "Sure! Here is the call: calculate_triangle_area(base=10, height=5)",
    "Sure (this is easy): calculate_triangle_area(base=10, height=5)",
    "[calculate_triangle_area(base=10, height=5)]",
    "calculate_triangle_area(base=10, height=5, unit='Units')",  # strings: case-insensitive
])
def test_function_call_right(output):
    assert function_call_match(output, TRI)


@pytest.mark.parametrize("output", [
    "calculate_triangle_area(base=10, height=6)",  # wrong value
    "calculate_triangle_area(base=10)",  # missing required arg
    "calculate_triangle_area(base=10, height=5, color='red')",  # unexpected arg
    "calculate_rectangle_area(base=10, height=5)",  # wrong function name
    "area(base=10, height=5)",
    "calculate_triangle_area(10, 5)",  # positional args are not accepted
    "calculate_triangle_area(base=10.0, height=5)",  # float for an int parameter (BFCL rejects too)
    "calculate_triangle_area(base='10', height=5)",  # string for an int
    "calculate_triangle_area(base=True, height=5)",  # bool is not a number
    "calculate_triangle_area(base=b, height=5)",  # a variable, not a literal
    "calculate_triangle_area(base=2*5, height=5)",  # an expression, not a literal
    "calculate_triangle_area(base=10, height=5, unit='meters')",  # optional arg with a wrong value
    "calculate_triangle_area(base=10, base=10, height=5)",  # repeated keyword (not even valid Python)
    "calculate_triangle_area(base=10, height=5",  # malformed: unclosed
    "The area is 25 square units.",  # no call at all
    "", "   ", "```\n```",
])
def test_function_call_wrong(output):
    assert not function_call_match(output, TRI)


def test_function_call_numbers_and_optional():
    assert function_call_match("math.hypot(x=4, y=5)", HYPOT)
    assert function_call_match("math.hypot(x=4, y=5, z=0)", HYPOT)
    assert not function_call_match("math.hypot(x=4, y=5, z=1)", HYPOT)
    assert not function_call_match("hypot(x=4, y=5)", HYPOT)  # dotted name must match exactly
    assert not function_call_match("math.hypot(x=-4, y=5)", HYPOT)
    # float parameter accepts an int; "" first means optional; the doc's required list is enforced too
    assert function_call_match("calculate_emissions(distance=12000, fuel_type='gas', fuel_efficiency=25)", EMIS)
    assert function_call_match("calculate_emissions(distance=12000, fuel_type='gas', fuel_efficiency=25.0)", EMIS)
    assert function_call_match("calculate_emissions(distance=12000, fuel_type='gas')", EMIS)
    assert not function_call_match("calculate_emissions(distance=12000, fuel_type='gas')", EMIS,
                                   required=["distance", "fuel_type", "fuel_efficiency"])
    assert not function_call_match("calculate_emissions(distance=12000, fuel_type='gas', fuel_efficiency=25.5)",
                                   EMIS)


def test_function_call_strings_are_bfcl_normalised():
    assert function_call_match('get_weather(city="New York, NY")', STR)
    assert function_call_match('get_weather(city="new york ny")', STR)  # spaces, commas, case ignored
    assert function_call_match('get_weather(city="New-York")', STR)
    assert not function_call_match('get_weather(city="Newark")', STR)
    assert not function_call_match('get_weather(city="New York", detailed="False")', STR)  # str for a bool
    assert function_call_match('get_weather(city="New York", detailed=False)', STR)
    assert not function_call_match('get_weather(city="New York", detailed=0)', STR)  # 0 is not False here
    assert not function_call_match('get_weather(city="")', STR)  # "" only marks optional, it is not a value


def test_function_call_nested_values():
    good = ("paint_requirement.calculate(area={'width': 20, 'height': 12}, paint_coverage=350, "
            "exclusion={'type': 'window', 'area': 15})")
    assert function_call_match(good, NESTED)
    assert not function_call_match(good.replace("'width': 20", "'width': 21"), NESTED)
    assert not function_call_match(good.replace("'area': 15}", "'area': 15, 'extra': 1}"), NESTED)
    assert not function_call_match(good.replace("'type': 'window', ", ""), NESTED)  # missing required key
    lst = ("database.query(table='user', conditions=[{'field': 'age', 'operation': '>', 'value': '25'}, "
           "{'field': 'job', 'operation': '=', 'value': 'engineer'}])")
    assert function_call_match(lst, LIST_OF_DICTS)
    assert not function_call_match(lst.replace("'25'", "25"), LIST_OF_DICTS)
    assert not function_call_match(lst.replace("}, {", "}]) and ([{"), LIST_OF_DICTS)
    swapped = ("database.query(table='user', conditions=[{'field': 'job', 'operation': '=', 'value': 'engineer'}, "
               "{'field': 'age', 'operation': '>', 'value': '25'}])")
    assert not function_call_match(swapped, LIST_OF_DICTS)  # lists are compared in order


def test_function_call_ground_truth_forms():
    out = "calculate_triangle_area(base=10, height=5)"
    assert function_call_match(out, TRI[0])  # bare dict
    import json

    assert function_call_match(out, json.dumps(TRI))  # JSON string
    with pytest.raises(ValueError):
        function_call_match(out, TRI * 2)


def test_extract_first_call():
    assert extract_first_call("no call here") is None
    assert extract_first_call("the value (10) is f(x=1)") is not None  # "value (10)" with a space is prose
    assert parse_call("the value (10) is f(x=1)") == ("f", {"x": 1})
    assert parse_call("f(g(1))") is None  # outer call f has a positional argument
    assert parse_call("```py\nmod.sub.fn(a=[1, 2], b={'k': (1, 2)})\n```") == ("mod.sub.fn",
                                                                                 {"a": [1, 2], "b": {"k": (1, 2)}})
    assert parse_call("f(s='a)b', n=-3)") == ("f", {"s": "a)b", "n": -3})
    assert parse_call("f(**kw)") is None


def test_standardize_string():
    assert standardize_string("April 1, 2024") == standardize_string("april 1 2024")
    assert standardize_string("it's") == 'it"s'


def test_render_reference_call_roundtrip():
    assert render_reference_call(TRI) == 'calculate_triangle_area(base=10, height=5, unit="units")'
    assert render_reference_call(HYPOT) == "math.hypot(x=4, y=5)"
    req = ["distance", "fuel_type", "fuel_efficiency"]
    demo = render_reference_call(EMIS, req)
    assert demo == 'calculate_emissions(distance=12000, fuel_type="gas", fuel_efficiency=25.0, efficiency_reduction=0)'
    for gt, r in ((TRI, None), (HYPOT, None), (EMIS, req), (NESTED, None), (LIST_OF_DICTS, None), (STR, None)):
        assert function_call_match(render_reference_call(gt, r), gt, r)


# ----------------------------------------------------------------------------------------------------------------
# ISO 4217 codes
# ----------------------------------------------------------------------------------------------------------------

VALID = {"MGA", "MAD", "MGF", "USD", "EUR", "ALL"}


@pytest.mark.parametrize("output,ok", [
    ("The ISO 4217 code of the Malagasy Ariary is MGA.", True),
    ("MGA", True),
    ("(MGA)", True),
    ("ISO 4217: MGA", True),  # ISO is not a code, skipped
    ("The code is MAD.", False),  # a similar-looking wrong code
    ("MAD, or maybe MGA", False),  # only the first valid code counts
    ("MGA, MAD, USD, EUR", True),  # first one right
    ("USD MGA", False),
    ("The code is mga.", False),  # lowercase does not count
    ("The code is MGAX.", False),  # not a standalone token
    ("The code is XMGA", False),
    ("It is MG.", False),
    ("", False),
    ("I do not know.", False),
])
def test_currency_code_match(output, ok):
    assert currency_code_match(output, "MGA", VALID) is ok


# ----------------------------------------------------------------------------------------------------------------
# the paper's official rules
# ----------------------------------------------------------------------------------------------------------------

GOLD_ONE = [{"Action": "getRandomAxolotlImage", "Action_Input": "{}"}]
GOLD_TWO = [{"Action": "searchImages", "Action_Input": '{"size": "small", "q": "axolotl"}'},
            {"Action": "searchImages", "Action_Input": '{"size": "large"}'}]
GOLD_NUM = [{"Action": "getVerse", "Action_Input": '{"book": "gn", "chapter": 1, "number": 1}'}]


def test_paper_tooluse_correct_basic():
    assert paper_tooluse_correct("Thought: I need a picture.\nAction: getRandomAxolotlImage\nAction Input: {}",
                                 GOLD_ONE)
    assert paper_tooluse_correct("Action: getRandomAxolotlImage", GOLD_ONE)  # no input block: {} == {}
    assert not paper_tooluse_correct("Action: getRandomAxolotlImages\nAction Input: {}", GOLD_ONE)
    assert not paper_tooluse_correct("Action: getRandomAxolotlImage\nAction: getRandomAxolotlImage", GOLD_ONE)
    assert not paper_tooluse_correct("", GOLD_ONE)
    assert not paper_tooluse_correct("I cannot help with that.", GOLD_ONE)
    # a bad JSON block is dropped silently; here that leaves {} which equals the gold {}
    assert paper_tooluse_correct("Action: getRandomAxolotlImage\nAction Input: {oops}", GOLD_ONE)
    # an input that decodes to a non-empty dict makes it wrong
    assert not paper_tooluse_correct('Action: getRandomAxolotlImage\nAction Input: {"n": 1}', GOLD_ONE)


def test_paper_tooluse_multiset_and_merge():
    out = ('Action: searchImages\nAction Input: {"q": "axolotl", "size": "small"}\n'
           'Observation: ...\nAction: searchImages\nAction Input: {"size": "large"}')
    assert paper_tooluse_correct(out, GOLD_TWO)
    # merging: only the last "size" counts, on both sides
    out2 = ('Action: searchImages\nAction Input: {"q": "axolotl", "size": "tiny"}\n'
            'Action: searchImages\nAction Input: {"size": "large"}')
    assert paper_tooluse_correct(out2, GOLD_TWO)
    # one call instead of two: the multiset differs
    assert not paper_tooluse_correct('Action: searchImages\nAction Input: {"q": "axolotl", "size": "large"}',
                                     GOLD_TWO)
    # order of actions does not matter
    gold = [{"Action": "a", "Action_Input": "{}"}, {"Action": "b", "Action_Input": "{}"}]
    assert paper_tooluse_correct("Action: b\nAction: a", gold)
    # the name is only the word characters after "Action:"
    assert paper_tooluse_correct("Action: a.\nAction:b()", gold)


def test_paper_tooluse_types_case_whitespace_matter():
    good = 'Action: getVerse\nAction Input: {"book": "gn", "chapter": 1, "number": 1}'
    assert paper_tooluse_correct(good, GOLD_NUM)
    assert not paper_tooluse_correct(good.replace('"chapter": 1', '"chapter": "1"'), GOLD_NUM)
    assert not paper_tooluse_correct(good.replace('"gn"', '"GN"'), GOLD_NUM)
    assert not paper_tooluse_correct(good.replace('"gn"', '"gn "'), GOLD_NUM)
    assert not paper_tooluse_correct(good.replace(', "number": 1', ""), GOLD_NUM)
    # upstream compares with Python ==, so 1.0 equals 1 (documented)
    assert paper_tooluse_correct(good.replace('"chapter": 1', '"chapter": 1.0'), GOLD_NUM)
    # JSON string form of the gold is accepted too
    import json

    assert paper_tooluse_correct(good, json.dumps(GOLD_NUM))


def test_paper_tooluse_nested_gold_is_unreachable():
    gold = [{"Action": "updateUser", "Action_Input": '{"id": "1", "profileData": {"name": "x"}}'}]
    verbatim = 'Action: updateUser\nAction Input: {"id": "1", "profileData": {"name": "x"}}'
    assert not paper_tooluse_correct(verbatim, gold)  # the first "}" cuts the block: known upstream defect


@pytest.mark.parametrize("output,ok", [
    ("<reasoning>\nIt is A.\n</reasoning>\n<answer>\nA\n</answer>", True),
    ("<answer>A</answer>", True),
    ("A", True),  # no tags: the whole output, stripped
    ("  A \n", True),
    ("<answer>B</answer> no wait <answer>A</answer>", True),  # the LAST <answer> wins
    ("<answer>A</answer> no wait <answer>B</answer>", False),
    ("<answer>A.</answer>", False),
    ("<answer>(A)</answer>", False),
    ("<answer>a</answer>", False),  # case-sensitive
    ("<answer>A: CCO</answer>", False),
    ("The answer is A", False),
    ("<answer>\nA", True),  # no closing tag: rest of the text
    ("", False),
])
def test_paper_science_correct(output, ok):
    assert paper_science_correct(output, "A") is ok


def test_paper_science_extract():
    assert paper_science_extract("x<answer> C </answer>y") == "C"
    assert paper_science_extract("no tags ") == "no tags"


@pytest.mark.parametrize("output,reference,ok", [
    ("The ISO 639-3 code of the Bomboma language is bws.", "bws", True),
    ("BWS", "bws", True),
    ("the code is 'bws'!", "bws", True),
    ("It is the Malagasy ariary.", "Malagasy Ariary", True),
    ("Pa'anga", "Pa’anga", True),                    # apostrophes: punctuation, a separator
    ("cordoba oro", "Córdoba Oro", True),           # accents dropped on both sides
    ("The code is bwsx.", "bws", False),            # not a whole word
    ("b-w-s", "bws", False),
    ("The Ariary.", "Malagasy Ariary", False),      # only part of the reference
    ("Ariary Malagasy", "Malagasy Ariary", False),  # the words must be in order and adjacent
    ("anything", "", False),
])
def test_contains_word(output, reference, ok):
    from selfdistill.tasks.scorers import contains_word
    assert contains_word(output, reference) is ok


def test_contains_word_equals_token_search_by_regex():
    # the definition computed another way: a regex with word boundaries on lower-case ASCII text
    import re
    from selfdistill.tasks.scorers import contains_word
    texts = ["the code is bws", "bwsbws bws", "xbws", "a b c", "c a b", "ab c", "b c a b c"]
    for out in texts:
        for ref in ("bws", "a b", "b c", "c"):
            pat = r"(?<![a-z0-9])" + r"[^a-z0-9]+".join(map(re.escape, ref.split())) + r"(?![a-z0-9])"
            assert contains_word(out, ref) == bool(re.search(pat, out)), (out, ref)
