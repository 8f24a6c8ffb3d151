"""The words' evidence for the end of a turn: does a transcript's ending read as finished?

The table is call-centre speech as Deepgram (smart_format on) writes it, pauses included: the
punctuation it adds at a pause ("to.") must not finish a sentence, and numbers arrive as digits
("555-123-4567") as often as words.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import voice.utterance
from voice.utterance import (
    FINISHED,
    UNFINISHED,
    UNKNOWN,
    Ending,
    EndingVerdict,
    classify_ending,
    ending,
)

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

F, U, K = FINISHED, UNFINISHED, UNKNOWN

CASES: list[tuple[str, Ending, str]] = [
    # --- the issue's own case, with every punctuation an STT puts at the pause ----------------
    ("I'd like to move my appointment to", U, "preposition or infinitive: to"),
    ("I'd like to move my appointment to.", U, "preposition or infinitive: to"),
    ("I'd like to move my appointment to?", U, "preposition or infinitive: to"),
    ("I'd like to move my appointment to!", U, "preposition or infinitive: to"),
    ("I'd like to move my appointment to,", U, "trailing ','"),
    ("I'd like to move my appointment to...", U, "trailing '...'"),
    ("I'd like to move my appointment to\u2026", U, "trailing '...'"),
    ("I'd like to move my appointment to \u2014", U, "trailing '\u2014'"),
    ("I'd like to move my appointment to -", U, "trailing '-'"),
    ("I\u2019d like to move my appointment to", U, "preposition or infinitive: to"),
    ("I'd like to move my appointment to next Tuesday afternoon.", K, ""),
    # --- prepositions, stranded or not -------------------------------------------------------
    ("I'm calling for", U, "preposition: for"),
    ("Can you help me with", U, "preposition: with"),
    ("I live in", U, "preposition: in"),
    ("The appointment is on", U, "preposition: on"),
    ("Can I pay by", U, "preposition: by"),
    ("Who am I speaking with?", F, "question: who ...?"),
    ("Where are you calling from?", F, "question: where ...?"),
    ("What\u2019s this about?", F, "question: what's ...?"),
    ("That's what I'm looking for.", K, ""),
    ("What I'd like is to move my appointment to", U, "preposition or infinitive: to"),
    ("I'll hold on.", K, ""),
    ("Let me log in.", K, ""),
    ("I'll stop by.", K, ""),
    ("It's on.", K, ""),
    # --- determiners -------------------------------------------------------------------------
    ("Can I get the", U, "determiner: the"),
    ("I need a", U, "determiner: a"),
    ("I have a question about my", U, "determiner: my"),
    ("Is that your", U, "determiner: your"),
    ("I'm calling about this", U, "determiner: this"),
    ("I'd like some", U, "determiner: some"),
    ("I want to cancel Plan A", K, ""),
    ("Who is this?", F, "question: who ...?"),
    # --- conjunctions ------------------------------------------------------------------------
    ("Yeah and", U, "conjunction: and"),
    ("It's on Main Street and.", U, "conjunction: and"),
    ("I tried it but", U, "conjunction: but"),
    ("I'm calling because", U, "conjunction: because"),
    ("I'm calling 'cause", U, "conjunction: cuz"),
    ("It stopped working, so", U, "conjunction: so"),
    ("Alright, so", U, "conjunction: so"),
    ("I don't think so.", K, ""),
    ("Do you want it shipped, or", U, "conjunction: or"),
    ("I was wondering if", U, "conjunction: if"),
    ("The problem is that", U, "conjunction: problem is that"),
    ("I was told that", U, "conjunction: told that"),
    ("I know that.", K, ""),
    ("Can you do that?", F, "question: can ...?"),
    ("I have the blue one, which", U, "relative: which"),
    # --- fillers -----------------------------------------------------------------------------
    ("Um", U, "filler: um"),
    ("So I was, um", U, "filler: um"),
    ("My account is, uh.", U, "filler: uh"),
    ("It's er", U, "filler: er"),
    ("I think erm", U, "filler: erm"),
    ("Hmm.", U, "filler: hmm"),
    ("Hmm?", K, ""),
    ("Uh-huh.", F, "complete answer: uh-huh"),
    ("mm-hmm", F, "complete answer: mm-hmm"),
    # --- verbs and auxiliaries waiting for what comes next -----------------------------------
    ("I'd like", U, "verb or comparison without its object: i'd like"),
    ("It's like", U, "verb or comparison without its object: it's like"),
    ("I like it.", K, ""),
    ("What would you like?", F, "question: what ...?"),
    ("If you'd like.", K, ""),
    ("I want", U, "verb without its object: want"),
    ("I need", U, "verb without its object: need"),
    ("That's all I need.", K, ""),
    ("Whenever you want.", K, ""),
    ("Kinda.", K, ""),
    ("I'm gonna", U, "contraction: gonna"),
    ("I wanna", U, "contraction: wanna"),
    ("I'd", U, "contraction: i'd"),
    ("Hi, I'm", U, "contraction: i'm"),
    ("Can you", U, "question opener: can you"),
    ("Could you", U, "question opener: could you"),
    ("Hi, um, could you please", U, "request opener: could you please"),
    ("Could I speak", U, "question opener: could i speak"),
    ("Is there", U, "question opener: is there"),
    ("What time do you", U, "question without its verb: do you"),
    ("Where is", U, "question opener: where is"),
    ("Hi, my name is", U, "copula: is"),
    ("My account number is", U, "copula: is"),
    ("The reason I'm calling is", U, "copula: is"),
    ("Hi, this is", U, "copula: this is"),
    ("The best time would be", U, "copula: would be"),
    ("I think", U, "verb without its clause: i think"),
    ("I was wondering if you could", U, "clause without its verb: if you could"),
    ("Yes, I can.", F, "short answer: yes i can"),
    ("No, it isn't.", F, "short answer: no it isn't"),
    ("Yes, this is.", F, "short answer: yes this is"),
    ("I don't know.", K, ""),
    ("I'd love to.", U, "preposition or infinitive: to"),  # elliptic, but usually "to ..."
    # --- half a number -----------------------------------------------------------------------
    ("My phone number is 555", U, "phone number with 3 of 10 digits"),
    ("My phone number is five five five one two three", U, "phone number with 6 of 10 digits"),
    ("My phone number is 555-123-45", U, "phone number with 8 of 10 digits"),
    ("My phone number is 555-123-4567.", F, "phone number with 10 digits"),
    ("My number is (555) 123-4567", F, "phone number with 10 digits"),
    ("My cell is 1 800 555 0199.", F, "phone number with 11 digits"),
    ("My number is 555-1234.", K, ""),  # a local number is complete; so may the rest come
    ("My zip code is 9021", U, "ZIP code with 4 of 5 digits"),
    ("My zip code is 90210.", F, "ZIP code with 5 digits"),
    ("My zip is nine oh two one oh", F, "ZIP code with 5 digits"),
    ("Zip code 90210-12", U, "ZIP code with 7 of 9 digits"),
    ("My card number is 4111 1111 1111", U, "card number with 12 of 16 digits"),
    ("My credit card number is 4111 1111 1111 1111.", F, "card number with 16 digits"),
    ("The last four of my card are 1 2 3", U, "last four digits with 3 of 4 digits"),
    ("The last four of my card are 1234.", F, "last four digits with 4 digits"),
    # no known length, but no account number is that short: a group of one being read out
    ("My account number is four five", U, "account number with 2 of at least 4 digits"),
    ("My policy 12", U, "policy number with 2 of at least 4 digits"),
    ("My account number is four five seven two nine one.", K, ""),
    ("My room number is twelve.", K, ""),
    ("My order is 12 mugs", K, ""),
    ("It's two point", U, "number still going: point"),
    ("It's five five double", U, "number still going: double"),
    ("It was two hundred and", U, "conjunction: and"),
    ("My zip is nine oh two ninety", K, ""),  # "ninety" may still become "ninety-one"
    ("My email is john dot", U, "still spelling: dot"),
    ("I was born in 1985.", K, ""),
    ("It's $25.", K, ""),
    ("What's the point?", F, "question: what's ...?"),
    # --- finished on their face --------------------------------------------------------------
    ("Yes.", F, "complete answer: yes"),
    ("no", F, "complete answer: no"),
    ("Okay.", F, "complete answer: okay"),
    ("No thanks.", F, "complete answer: no thanks"),
    ("Okay, thank you, bye.", F, "complete answer: okay thank you bye"),
    ("Hi.", F, "complete answer: hi"),
    ("Hello?", F, "complete answer: hello"),
    ("Good morning.", F, "complete answer: good morning"),
    ("Not yet.", F, "complete answer: not yet"),
    ("I think that's everything, thank you so much.", F, "closing: thank you so much"),
    ("Can you send it to me please?", F, "closing: please"),
    ("Can you hear me?", F, "question: can ...?"),
    ("What time do you close on Saturday?", F, "question: what ...?"),
    ("It's ready, isn't it?", F, "question: isn't ...?"),
    ("You're open Saturday, right?", F, "tag question: right?"),
    ("How are you?", F, "question: how ...?"),
    ("Who does?", F, "question: who ...?"),
    ("Oh, is it?", F, "question: is ...?"),
    ("So do I.", K, ""),
    ("The first one is", U, "copula: is"),
    ("That's what the problem is.", K, ""),
    ("I live on Main St.", K, ""),
    # --- no evidence either way --------------------------------------------------------------
    ("So my appointment is on Tuesday?", K, ""),
    ("I'd like to cancel my subscription.", K, ""),
    ("I'm calling about my bill", K, ""),
    ("Sure, I can help you with that order right away.", K, ""),
    ("Oh.", K, ""),
    ("", K, ""),
    ("   \n", K, ""),
    ("...", K, ""),
    ("\u2014", K, ""),
    # --- only the last sentence counts -------------------------------------------------------
    ("I want to reschedule. Um", U, "filler: um"),
    ("What? I'd like to move it to", U, "preposition or infinitive: to"),
    ("I'd like to move my appointment to. Next Tuesday.", K, ""),
    ("I'd like to speak to Dr.", U, "title: dr"),
]


@pytest.mark.parametrize(
    ("text", "expected", "reason"), CASES, ids=[c[0] or "<empty>" for c in CASES]
)
def test_table(text: str, expected: Ending, reason: str) -> None:
    assert classify_ending(text) == EndingVerdict(expected, reason)
    assert ending(text) is expected


def test_table_covers_all_three_verdicts() -> None:
    counts = {e: sum(1 for _, got, _ in CASES if got is e) for e in Ending}
    assert len(CASES) >= 60
    assert min(counts.values()) >= 15, counts


@given(st.text())
@example("'")
@example("\u2019cause")
@example("- - -")
@example("5-")
@example("twenty-")
@example("0" * 200)
@example("İ" * 3)
@PROPS
def test_any_text_gets_a_verdict_with_a_reason_exactly_when_decided(text: str) -> None:
    verdict = classify_ending(text)
    assert isinstance(verdict.ending, Ending)
    assert (verdict.reason == "") == (verdict.ending is UNKNOWN)


def has_word(text: str) -> bool:
    # U+02BC is a letter to str.isalnum, but STTs use it as an apostrophe and so does the module.
    return any(c.isalnum() and c != "\u02bc" for c in text)


UNFINISHED_PREFIXES = [text for text, expected, _ in CASES if expected is UNFINISHED]
FINISHED_TAILS = [" next Tuesday afternoon.", " thank you.", " at three o'clock.", " right now."]
plain_words = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8), max_size=6
)


@given(st.sampled_from(UNFINISHED_PREFIXES), plain_words, st.sampled_from(FINISHED_TAILS))
@PROPS
def test_finishing_an_unfinished_phrase_makes_it_not_unfinished(
    prefix: str, middle: list[str], tail: str
) -> None:
    text = prefix + "".join(" " + w for w in middle) + tail
    assert ending(text) is not UNFINISHED, text


@given(st.text(), st.sampled_from([" the", " and", " um", " my", " uh,", " I'd"]))
@PROPS
def test_a_dangling_function_word_is_always_unfinished(text: str, last: str) -> None:
    assert ending(text + last) is UNFINISHED


@given(
    st.text().filter(has_word),
    st.sampled_from([",", "...", " \u2014", ":", "\u2026"]),
)
@PROPS
def test_a_trailing_continuation_mark_is_unfinished(text: str, mark: str) -> None:
    assert ending(text + mark) is UNFINISHED


@given(st.text(), st.sampled_from([c[0] for c in CASES if any(ch.isalnum() for ch in c[0])]))
@PROPS
def test_only_the_last_sentence_counts(before: str, sentence: str) -> None:
    assert classify_ending(before + "? " + sentence) == classify_ending(sentence)


@given(st.text())
@PROPS
def test_apostrophe_style_and_surrounding_whitespace_do_not_matter(text: str) -> None:
    verdict = classify_ending(text)
    assert classify_ending(text.replace("'", "\u2019")) == verdict
    assert classify_ending(" \t" + text + " \n") == verdict


digit_styles = st.sampled_from(["joined", "spaced", "words", "dashed"])
WORDS = "zero one two three four five six seven eight nine".split()


def spoken(digits: str, style: str) -> str:
    if style == "joined":
        return digits
    if style == "spaced":
        return " ".join(digits)
    if style == "words":
        return " ".join(WORDS[int(d)] for d in digits)
    return "-".join(digits[i : i + 3] for i in range(0, len(digits), 3))  # smart_format-ish


@given(st.text(alphabet="0123456789", min_size=1, max_size=12), digit_styles)
@PROPS
def test_a_phone_number_is_unfinished_until_it_has_its_digits(digits: str, style: str) -> None:
    got = ending(f"Sure, my phone number is {spoken(digits, style)}.")
    if len(digits) < 7 or 7 < len(digits) < 10:
        assert got is UNFINISHED
    elif len(digits) == 10:
        assert got is FINISHED
    else:
        assert got is not UNFINISHED


@given(st.text(alphabet="0123456789", min_size=1, max_size=9), digit_styles)
@PROPS
def test_a_zip_code_is_unfinished_until_it_has_five_or_nine_digits(digits: str, style: str) -> None:
    got = ending(f"The zip code is {spoken(digits, style)}")
    assert got is (FINISHED if len(digits) in (5, 9) else UNFINISHED)


def test_public_api_is_declared_and_the_module_is_pure() -> None:
    module = voice.utterance
    assert len(module.__all__) == len(set(module.__all__))
    assert all(hasattr(module, name) for name in module.__all__)
    # Sans-I/O and dependency-free: standard library only, and nothing that does I/O.
    tree = ast.parse(Path(module.__file__ or "").read_text())
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
    assert not imported & {"asyncio", "socket", "os", "threading", "re"}
