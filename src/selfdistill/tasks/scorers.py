"""Pure scoring functions: ``(model output, reference) -> bool``. No model, no I/O, never raise on bad output.

* :func:`strip_thinking`: a reply without its ``<think>...</think>`` reasoning blocks (applied before scoring
  when the model's chat template has them; see evaluate.evaluate_task).
* :func:`exact_match`: normalised string equality, with a strict "the answer comes first" allowance.
* :func:`regex_match`: ``re.search`` of a pattern.
* :func:`contains_word`: the reference appears in the reply as a whole word (or run of whole words) after
  normalisation (case, accents, punctuation).
* :func:`function_call_match`: BFCL-style AST check of one Python function call against BFCL's
  ``possible_answer`` ground truth.
* :func:`currency_code_match`: the knowledge task's rule (first valid ISO 4217 code token must be the answer).
* :func:`paper_tooluse_correct` / :func:`paper_science_correct`: the official SDFT evaluation rules
  (``eval_tooluse.py`` / ``eval_science.py`` at upstream commit 19c5732/d775732), reproduced exactly.
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from collections import Counter
from typing import Any, Iterable

# --------------------------------------------------------------------------------------------------------------
# reasoning blocks
# --------------------------------------------------------------------------------------------------------------


def strip_thinking(text: str, open_tag: str = "<think>", close_tag: str = "</think>") -> str:
    """The reply without its reasoning blocks, stripped of surrounding whitespace.

    Every ``<think>...</think>`` is removed; text before a ``</think>`` with no ``<think>`` before it is removed
    too (the prompt opened the block); an unclosed ``<think>`` removes everything after it (the reasoning ran
    out of tokens: there is no answer).
    """
    if not isinstance(text, str):
        return ""
    head, sep, tail = text.partition(close_tag)
    if sep and open_tag not in head:
        text = tail
    text = re.sub(re.escape(open_tag) + r".*?" + re.escape(close_tag), "", text, flags=re.DOTALL)
    if open_tag in text:
        text = text[:text.index(open_tag)]
    return text.strip()


# --------------------------------------------------------------------------------------------------------------
# exact match
# --------------------------------------------------------------------------------------------------------------

# Characters stripped from both ends of an answer: ASCII punctuation, typographic quotes, markdown marks.
_END_PUNCT = "".join(sorted(set(r"""!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~""" + "“”‘’«»…·–—")))
# Leading answer markers, e.g. "The answer is", "Answer:", "Final answer -".
_PREFIX_RE = re.compile(r"^(?:the\s+)?(?:final\s+|correct\s+)?answer\b\s*(?:is\b)?\s*[:\-–—=]?\s*", re.IGNORECASE)
# A clause boundary inside the first line: sentence/clause punctuation followed by a space or the end.
_BOUNDARY_RE = re.compile(r"[.!?;,:](?=\s|$)")


def normalize_answer(text: str) -> str:
    """Case-fold, collapse whitespace, drop a leading "the answer is"/"answer:" and punctuation at both ends."""
    if not isinstance(text, str):
        return ""
    s = unicodedata.normalize("NFKC", text).strip()
    prev = None
    while s != prev:  # e.g. '**Answer:** "Paris".' needs a few rounds
        prev = s
        s = s.strip(_END_PUNCT + " \t\r\n")
        m = _PREFIX_RE.match(s)
        if m and m.end() < len(s):
            s = s[m.end():]
    return " ".join(s.lower().split())


def exact_match(output: str, reference: str) -> bool:
    """True iff the output gives exactly the reference answer, up to normalisation.

    Normalisation (:func:`normalize_answer`): Unicode NFKC, case, runs of whitespace, punctuation/quotes at both
    ends, and one leading "The answer is" / "Answer:" / "Final answer:" marker.

    Accepted when the normalised reference equals, after normalisation,
      1. the whole output, or
      2. the first non-empty line of the output, or
      3. a leading part of that first line that ends at a clause boundary (``. , ; : ! ?`` followed by a space
         or the end of the line): ``"Paris. It is the capital."`` and ``"Paris, of course"`` match ``Paris``.

    Deliberately strict: ``"Paris is the capital"``, ``"New York City"`` (for ``New York``), ``"12 + 7 = 19"``
    (for ``12``), a reference buried later in the output, or an answer on the second line all fail.
    """
    ref = normalize_answer(reference)
    if not ref or not isinstance(output, str) or not output.strip():
        return False
    if normalize_answer(output) == ref:
        return True
    first = next((ln for ln in output.splitlines() if ln.strip()), "")
    if normalize_answer(first) == ref:
        return True
    # Drop a leading marker first, so that "Answer: Paris, France." is cut after the marker, not at its colon.
    body = first.strip()
    m = _PREFIX_RE.match(body.strip(_END_PUNCT + " "))
    if m:
        body = body.strip(_END_PUNCT + " ")[m.end():]
    for b in _BOUNDARY_RE.finditer(body):
        if normalize_answer(body[: b.start()]) == ref:
            return True
    return False


# --------------------------------------------------------------------------------------------------------------
# regex
# --------------------------------------------------------------------------------------------------------------


def regex_match(output: str, pattern: str, flags: int = 0) -> bool:
    """True iff ``re.search(pattern, output, flags)`` finds a match. Anchor the pattern (``^...$``, with
    ``re.MULTILINE`` if wanted) for a stricter check. An invalid pattern raises ``ValueError`` (a data error,
    not a model error)."""
    if not isinstance(output, str):
        return False
    try:
        rx = re.compile(pattern, flags)
    except re.error as e:
        raise ValueError(f"invalid regex {pattern!r}: {e}") from None
    return rx.search(output) is not None


# --------------------------------------------------------------------------------------------------------------
# BFCL-style function call
# --------------------------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```[ \t]*[\w+.-]*[ \t]*\r?\n?(.*?)(?:```|\Z)", re.DOTALL)
# A (dotted) name directly followed by "(" (no space: "value (10)" in prose is not a call).
_CALL_START_RE = re.compile(r"(?<![\w.])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\(")
_MAX_SCAN_CHARS = 20_000
_MAX_PAREN_TRIES = 400


def standardize_string(s: str) -> str:
    """BFCL's ``standardize_string`` (``ast_checker.py``): drop spaces and ``, . / - _ * ^``, lowercase, and turn
    single quotes into double quotes. So ``"April 1, 2024"`` == ``"april 1 2024"``."""
    return re.sub(r"[ \,\.\/\-\_\*\^]", "", s).lower().replace("'", '"')


def _dotted_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _candidate_texts(output: str) -> list[str]:
    """The code inside the first ``` fence (if any), then the whole output with fence lines removed."""
    out = []
    m = _FENCE_RE.search(output)
    if m:
        out.append(m.group(1))
    out.append(re.sub(r"```[^\n]*", "", output))
    return out


def extract_first_call(output: str) -> ast.Call | None:
    """The first Python call expression ``name(...)`` / ``pkg.name(...)`` in `output`, parsed, or None.

    Code fences are stripped (the first fenced block is searched first) and leading prose is skipped. Calls that
    do not parse (e.g. prose in parentheses) are skipped; the outermost call wins (``f(g(1))`` gives ``f``).
    """
    if not isinstance(output, str) or not output.strip():
        return None
    for text in _candidate_texts(output):
        text = text[:_MAX_SCAN_CHARS]
        closes = [i for i, ch in enumerate(text) if ch == ")"]
        for m in _CALL_START_RE.finditer(text):
            start, tries = m.start(), 0
            for end in closes:
                if end < m.end() - 1:
                    continue
                tries += 1
                if tries > _MAX_PAREN_TRIES:
                    break
                try:
                    node = ast.parse(text[start: end + 1], mode="eval").body
                except (SyntaxError, ValueError, MemoryError, RecursionError):
                    continue
                if isinstance(node, ast.Call) and _dotted_name(node.func) is not None:
                    return node
                break
    return None


def parse_call(output: str) -> tuple[str, dict[str, Any]] | None:
    """``(function name, {arg: python value})`` of the first call in `output`, or None when there is no call, it
    has positional or ``**`` arguments, a repeated keyword, or a non-literal argument value (a variable, an
    expression such as ``2*3``): BFCL's Python checker only knows keyword arguments with literal values."""
    node = extract_first_call(output)
    if node is None or node.args:
        return None
    kwargs: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None or kw.arg in kwargs:
            return None
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return _dotted_name(node.func), kwargs  # type: ignore[return-value]


def _is_optional_marker(a: Any) -> bool:
    return isinstance(a, str) and a == ""


def _value_allowed(value: Any, allowed: Any) -> bool:
    """`value` matches one of the allowed values (BFCL lists them; "" only marks an optional parameter)."""
    if not isinstance(allowed, list):
        allowed = [allowed]
    return any(_matches(value, a) for a in allowed if not _is_optional_marker(a))


def _dict_matches(value: Any, spec: dict) -> bool:
    """BFCL dict checker: `spec` maps each key to its list of allowed values; keys whose list holds "" may be
    omitted; no other keys are allowed."""
    if not isinstance(value, dict):
        return False
    for k in value:
        if k not in spec:
            return False
    for k, allowed in spec.items():
        if k in value:
            if not _value_allowed(value[k], allowed):
                return False
        elif not (isinstance(allowed, list) and any(_is_optional_marker(a) for a in allowed)):
            return False
    return True


def _matches(value: Any, a: Any) -> bool:
    if isinstance(a, bool):
        return isinstance(value, bool) and value == a
    if isinstance(a, int):  # an int parameter needs an int (5.0 is wrong), like BFCL
        return isinstance(value, int) and not isinstance(value, bool) and value == a
    if isinstance(a, float):  # a float parameter also takes an int (5 == 5.0), like BFCL
        return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == a
    if isinstance(a, str):
        return isinstance(value, str) and standardize_string(value) == standardize_string(a)
    if a is None:
        return value is None
    if isinstance(a, dict):
        return _dict_matches(value, a)
    if isinstance(a, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(a):
            return False
        return all(_matches(v, ai) for v, ai in zip(value, a))
    return value == a


def normalize_ground_truth(ground_truth: Any) -> tuple[str, dict[str, list]]:
    """Accept BFCL's ``[{name: {param: [allowed, ...]}}]`` (one call), the bare ``{name: {...}}`` dict, or a
    JSON string of either; return ``(name, {param: allowed list})``."""
    gt = json.loads(ground_truth) if isinstance(ground_truth, str) else ground_truth
    if isinstance(gt, list):
        if len(gt) != 1:
            raise ValueError(f"function_call_match scores one call; ground truth has {len(gt)}")
        gt = gt[0]
    if not isinstance(gt, dict) or len(gt) != 1:
        raise ValueError("ground truth must be {function_name: {param: [allowed values]}}")
    (name, params), = gt.items()
    if not isinstance(params, dict):
        raise ValueError(f"ground truth for {name!r}: parameters must be a dict")
    return name, {k: (v if isinstance(v, list) else [v]) for k, v in params.items()}


def function_call_match(output: str, ground_truth: Any, required: Iterable[str] | None = None) -> bool:
    """BFCL "simple" AST check of the first function call in `output`.

    `ground_truth` is BFCL's ``possible_answer`` entry: ``[{"fn": {"param": [allowed values]}}]``. Correct iff
      * a call can be extracted (:func:`extract_first_call`; code fences and leading prose are fine) and all its
        arguments are keyword arguments with literal values (:func:`parse_call`);
      * the function name equals the ground truth's exactly (dotted names included);
      * no argument outside the ground truth's parameters (an unexpected argument fails);
      * every parameter whose allowed list lacks ``""`` is given, and so is every name in `required` (the
        function doc's ``required`` list, which BFCL also enforces);
      * every given value matches one allowed value: strings after BFCL's :func:`standardize_string`
        (case, spaces and ``,./-_*^`` ignored); ints need an int (``5.0`` fails for an int parameter) while a
        float parameter accepts an int (``5`` == ``5.0``), as BFCL does; booleans are never numbers;
        lists/tuples element-wise in order; dicts key-by-key with nested allowed lists (BFCL's dict checker).
    Simplifications against BFCL: no per-type check from the function doc (the allowed values carry the types),
    no positional arguments, and ``""`` is only an "optional" marker (an explicit empty string never matches it).
    """
    name, params = normalize_ground_truth(ground_truth)
    parsed = parse_call(output)
    if parsed is None:
        return False
    got_name, args = parsed
    if got_name != name:
        return False
    for arg in args:
        if arg not in params:
            return False
    for p in required or ():
        if p not in args:
            return False
    for p, allowed in params.items():
        if p in args:
            if not _value_allowed(args[p], allowed):
                return False
        elif not any(_is_optional_marker(a) for a in allowed):
            return False
    return True


def _first_allowed(allowed: list, *, force: bool = False) -> tuple[bool, Any]:
    """(present?, value): the first allowed value; skip when it is "" (optional) unless `force`."""
    if allowed and _is_optional_marker(allowed[0]) and not force:
        return False, None
    for a in allowed:
        if not _is_optional_marker(a):
            return True, a
    return False, None


def render_value(a: Any) -> str:
    """Python source for one ground-truth value (dict specs take the first allowed value of each key)."""
    if isinstance(a, bool) or a is None:
        return repr(a)
    if isinstance(a, (int, float)):
        return repr(a)
    if isinstance(a, str):
        return json.dumps(a, ensure_ascii=False)  # a JSON string literal is a valid Python literal
    if isinstance(a, dict):
        parts = []
        for k, allowed in a.items():
            present, v = _first_allowed(allowed if isinstance(allowed, list) else [allowed])
            if present:
                parts.append(f"{json.dumps(k, ensure_ascii=False)}: {render_value(v)}")
        return "{" + ", ".join(parts) + "}"
    if isinstance(a, (list, tuple)):
        return "[" + ", ".join(render_value(x) for x in a) + "]"
    raise TypeError(f"cannot render {type(a).__name__} value {a!r}")


def render_reference_call(ground_truth: Any, required: Iterable[str] | None = None) -> str:
    """One canonical call ``name(arg=value, ...)`` from a BFCL ground truth: the first allowed value of each
    parameter, skipping optional parameters whose first allowed value is ``""`` (unless the function doc lists
    them in `required`, then the first non-empty allowed value is used)."""
    name, params = normalize_ground_truth(ground_truth)
    req = set(required or ())
    parts = []
    for p, allowed in params.items():
        present, v = _first_allowed(allowed, force=p in req)
        if present:
            parts.append(f"{p}={render_value(v)}")
    return f"{name}({', '.join(parts)})"


# --------------------------------------------------------------------------------------------------------------
# contains a whole word
# --------------------------------------------------------------------------------------------------------------


def word_tokens(text: str) -> list[str]:
    """Lower-case word tokens: Unicode NFKD with accents dropped, case-folded, every run of characters that are
    not letters or digits is a separator. ``"Pa’anga!"`` -> ``["pa", "anga"]``, ``"Córdoba Oro"`` ->
    ``["cordoba", "oro"]``."""
    if not isinstance(text, str):
        return []
    s = unicodedata.normalize("NFKD", text)
    s = "".join(c for c in s if not unicodedata.combining(c)).casefold()
    return re.findall(r"[^\W_]+", s)


def contains_word(output: str, reference: str) -> bool:
    """True iff the reference's word tokens appear in the output as a contiguous run of whole tokens
    (:func:`word_tokens` on both sides). ``"The ISO 639-3 code of Bomboma is bws."`` contains ``bws``;
    ``"bwsx"`` or ``"b-w-s"`` do not; ``"Malagasy ariary"`` contains ``Ariary``. An empty reference never
    matches."""
    ref = word_tokens(reference)
    out = word_tokens(output)
    if not ref:
        return False
    n = len(ref)
    return any(out[i:i + n] == ref for i in range(len(out) - n + 1))


# --------------------------------------------------------------------------------------------------------------
# knowledge: ISO 4217 codes
# --------------------------------------------------------------------------------------------------------------

_CODE_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{3}(?![A-Za-z0-9])")


def currency_code_match(output: str, code: str, valid_codes: Iterable[str]) -> bool:
    """True iff the first standalone all-caps 3-letter token in `output` that is a valid code (`valid_codes`)
    equals `code`. Other capitalised words ("ISO", "THE") are skipped; a lowercase "mga" does not count; listing
    several codes only counts the first, so guessing many does not win."""
    if not isinstance(output, str):
        return False
    valid = valid_codes if isinstance(valid_codes, (set, frozenset)) else set(valid_codes)
    for m in _CODE_TOKEN_RE.finditer(output):
        if m.group(0) in valid:
            return m.group(0) == code
    return False


# --------------------------------------------------------------------------------------------------------------
# the paper's official rules
# --------------------------------------------------------------------------------------------------------------


def paper_tooluse_actions(output: str) -> list[str]:
    """Every ``Action:`` in the output yields the run of word characters after it (official regex
    ``Action:\\s*(\\w+)``)."""
    return re.findall(r"Action:\s*(\w+)", output)


def paper_tooluse_inputs(output: str) -> dict:
    """Every ``Action Input:`` followed by ``{`` is read up to the FIRST ``}`` and JSON-decoded; blocks that fail
    to decode are dropped; the objects are merged, later keys overwriting earlier ones (official
    ``Action Input:\\s*({.*?})`` with DOTALL)."""
    merged: dict = {}
    for block in re.findall(r"Action Input:\s*({.*?})", output, re.DOTALL):
        try:
            parsed = json.loads(block)
        except json.JSONDecodeError:
            continue
        merged.update(parsed)
    return merged


def paper_tooluse_correct(output: str, golden_answer: Any) -> bool:
    """Official tool-use rule (``eval_tooluse.py``). `golden_answer` is the record's list of
    ``{"Action": name, "Action_Input": json-object string}`` (a JSON string of that list is also accepted).

    Correct iff (1) the predicted action names equal the gold names as a multiset (order ignored, counts
    matter) and (2) the merged predicted inputs dict equals the merged gold inputs dict (each gold
    ``Action_Input`` JSON-decoded and merged; undecodable ones skipped). Values are compared with Python ``==``
    after JSON decoding, exactly as upstream: ``"1" != 1`` and string case/whitespace matter (and, as in Python,
    ``1 == 1.0``). Known upstream quirks are kept: nested objects in an input can never match, and repeated keys
    across calls only check the last value (see the data README).
    """
    if not isinstance(output, str):
        return False
    gold = json.loads(golden_answer) if isinstance(golden_answer, str) else golden_answer
    gt_actions = [item["Action"] for item in gold]
    gt_inputs: dict = {}
    for item in gold:
        try:
            gt_inputs.update(json.loads(item["Action_Input"]))
        except Exception:  # noqa: BLE001 - upstream uses a bare except here
            pass
    pred_actions = paper_tooluse_actions(output)
    pred_inputs = paper_tooluse_inputs(output)
    return Counter(pred_actions) == Counter(gt_actions) and pred_inputs == gt_inputs


def paper_science_extract(output: str) -> str:
    """Text after the LAST ``<answer>`` (the whole output if none), cut at the next ``</answer>``, stripped."""
    return output.split("<answer>")[-1].split("</answer>")[0].strip()


def paper_science_correct(output: str, answer: str) -> bool:
    """Official science rule (``eval_science.py``): the extracted answer must equal the gold letter exactly
    (case-sensitive; ``"A."``, ``"(A)"`` or ``"A: ..."`` are wrong)."""
    if not isinstance(output, str):
        return False
    return paper_science_extract(output) == answer
