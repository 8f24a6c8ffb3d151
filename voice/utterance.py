"""Does a caller's transcript read as finished? The words' evidence for the end-of-turn decision.

A person does not answer "I'd like to move my appointment to" however long the pause: the last
word is a preposition, an article, a conjunction, a filler, a verb still waiting for its object,
or half a phone number. `classify_ending` reads that from the end of the transcript alone:

- UNFINISHED: the words cannot end an utterance here; the turn should wait whatever the prosody
  model says.
- FINISHED: a complete short answer ("yes", "okay, thanks, bye"), a courtesy close ("... thank
  you."), an elliptic answer ("Yes, I do."), a question ending in "?" that is shaped like one, or a
  number of the length its context asks for ("my zip code is 90210").
- UNKNOWN: the words say nothing either way (most content-word endings); the audio model and the
  timeouts decide.

Precision over recall in both directions: a false UNFINISHED costs latency (the turn waits for
the longer timeout), a false FINISHED makes the assistant talk over a caller who paused. Words that
end complete sentences about as often as unfinished ones ("that", "up", "I know", "I have") are
UNKNOWN unless their neighbours settle it.

STT punctuation is weak evidence: Deepgram's smart_format writes "to." at a pause, so a final "."
never makes an ending finished; a trailing "," "..." ":" ";" "&" or dash does mark it unfinished,
and "?" finishes only a clause shaped like a question. Only the last sentence is read: text before
the last ".", "?" or "!" does not change the verdict.

English only; US number lengths (phone 10 digits, or 7 for a local number, ZIP 5 or 9, card 15 or
16). Pure and stdlib-only, one pass over the words with frozenset lookups and no regular
expressions: it runs on every interim transcript.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "FINISHED",
    "UNFINISHED",
    "UNKNOWN",
    "Ending",
    "EndingVerdict",
    "classify_ending",
    "ending",
]


class Ending(Enum):
    FINISHED = "finished"
    UNFINISHED = "unfinished"
    UNKNOWN = "unknown"


FINISHED = Ending.FINISHED
UNFINISHED = Ending.UNFINISHED
UNKNOWN = Ending.UNKNOWN


@dataclass(frozen=True, slots=True)
class EndingVerdict:
    """The verdict and why: (UNFINISHED, "preposition: to"); reason "" when nothing decided."""

    ending: Ending
    reason: str


_NO_EVIDENCE = EndingVerdict(UNKNOWN, "")


def ending(text: str) -> Ending:
    """FINISHED, UNFINISHED or UNKNOWN for a transcript (see the module docstring)."""
    return classify_ending(text).ending


def _w(words: str) -> frozenset[str]:
    return frozenset(words.split())


# --- word classes (lowercase, apostrophes normalised to "'") ----------------------------------

_FILLERS = _w("um umm ummm uh uhh uhhh uhm er erm err errr hmm hmmm hm mmm")
_DETERMINERS = _w("the a an my your our their his its every")
# Contracted auxiliaries cannot be stranded at the end of a sentence ("Yes, it is", never "Yes,
# it's"), and the informal fusions all want a verb or a noun after them.
_NEVER_FINAL = _w(
    "it's that's there's here's what's where's who's how's when's why's he's she's let's "
    "i'm you're we're they're i've you've we've they've i'll you'll we'll they'll he'll she'll "
    "it'll that'll there'll i'd you'd we'd they'd he'd she'd it'd that'd there'd "
    "gonna wanna gotta hafta hasta lemme gimme outta oughta tryna finna i'ma imma"
)
_SUBJECT_NOUNS_IS = _w("name's number's address's email's problem's issue's question's")
_TITLES = _w("mr mrs ms dr prof")
# Prepositions that are seldom verb particles, so at the end they want their object, unless a
# wh-word earlier in the sentence stranded them ("Who am I speaking with?").
_PREPOSITIONS = _w(
    "to for of with from at into onto about between among amongst via per toward towards upon "
    "within without during until till regarding concerning including excluding except despite "
    "versus vs against across than unto amid"
)
# Also particles or adverbs ("log in", "hold on", "stop by", "it's on"): unfinished only when the
# word before is not a verb, object pronoun or pronoun-and-copula that takes them as a particle
# ("the appointment is on" wants a day; "it is on" does not).
_SOMETIMES_PREPOSITIONS = _w("in on by near")
_PARTICLE_HEADS = _w(
    "log logged logging sign signed signing check checked checking come came coming go goes "
    "going went gone get got getting set turn turned shut cut pick picked drop dropped stop "
    "stopped call called look looked fill filled break broke plug plugged move moved hand "
    "handed pass passed put let hold holding hang hanging stand standing swing dial dialed "
    "walk walked run ran moving be been being keep kept bring brought send sent "
    "it them me him her us you this that these those everything something all way "
    "i'm it's he's she's we're you're they're that's"
)
_CONJUNCTIONS = _w("and but nor because although unless whereas whether as cuz coz")
_SO_COMPLETE_AFTER = _w("think hope guess suppose believe say said says told not if even why do")
_THEN_AFTER = _w("and but so or")
_WHILE_NOUN_AFTER = _w("a little")
_ALSO_AFTER = _w("and but or so plus i we you they he she it is are was were am")
_WANTS_MORE = _w("just very let")
_COMPLEMENT_TAKERS_OF_THAT = _w(
    "think thought believe hope hoping guess mean meant means sure afraid aware glad worried "
    "seems seemed so such except given assuming told realize realized noticed"
)
_OTHER_AFTER = _w("the an any some no every")
_PLEASE_AFTER = _w("you i we")
_COPULAS = _w("is are was were am")
_MODALS = _w("can could will would should shall may might must")
_DO_HAVE = _w("do does did have has had")
_AUX = _MODALS | _COPULAS | _DO_HAVE
_NEG_AUX = _w(
    "can't couldn't won't wouldn't shouldn't mustn't don't doesn't didn't haven't hasn't "
    "hadn't isn't aren't wasn't weren't ain't"
)
_ANY_AUX = _AUX | _NEG_AUX
_BE_AUX = _COPULAS | _w("isn't aren't wasn't weren't")
_VERB_AUX = _ANY_AUX - _BE_AUX
# "Is it?" "Did you?" "Oh, does it?": complete echo questions. Modals are left out on purpose:
# "Could you" is how a request starts.
_ECHO_AUX = _BE_AUX | _w("do does did have has don't doesn't didn't haven't hasn't")
_SUBJECTS = _w("i we they he she")
_PRONOUNS = _SUBJECTS | _w("you it that this there these those")
_SO_NEITHER = _w("so neither nor")
_HAVE_CONTRACTIONS = _w("i've you've we've they've")
_BE_AFTER = _w("to gonna wanna gotta") | _NEVER_FINAL
_WH = _w(
    "what who whom whose where which when why how whatever whoever whichever wherever "
    "whenever what's who's where's how's when's why's"
)
# Wh-words that leave a gap for a stranded preposition or object later in the sentence.
_GAP_WH = _w("what who whom where which whose whatever whoever whichever wherever what's who's")
# "That's all I need", "if you want", "as you like": the object is given or not wanted.
_OBJECT_GIVEN = _GAP_WH | _w("all everything anything something if as whenever")
_WANT_VERBS = _w("want wants wanted need needs needed")
_LIKE_AFTER = _w(
    "i'd we'd would is was it's that's and just looks sounds seems feels look sound seem feel "
    "something more of or but so um uh i we really cost costs"
)
_CLAUSE_VERBS = _w("think hope mean")
_EMBEDDING_VERBS = _w("wondering wonder wondered see know ask asking check checking")
_MEANS_AFTER = _w("which that this it")
_QUESTION_OPENER_VERBS = _w(
    "get have ask speak talk make change book schedule order put send give tell know move "
    "add use bring grab set do"
)
_LEAD_INS = _w(
    "so okay ok and but um uh er erm hmm well oh hi hello hey yes yeah yep no sorry excuse me "
    "alright right also then now actually just like please"
)
_YES_NO = _w("yes yeah yep yup no nope nah")

# --- numbers -----------------------------------------------------------------------------------

_ONES = _w("zero oh one two three four five six seven eight nine")
_TEENS = _w("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen")
_TENS = _w("twenty thirty forty fifty sixty seventy eighty ninety")
_NUMBER_WORDS = _ONES | _TEENS | _TENS
_SCALES = {"hundred": 2, "thousand": 3}
_AFTER_NUMBER = _w("point double triple plus minus times")
_SPELLING_JOINERS = _w("dot underscore dash hyphen slash")
_PHONE_WORDS = _w("phone phone's telephone cell cellphone mobile callback")
_PHONE_OWNERS = _w("my your his her our their contact best callback home work") | _PHONE_WORDS
# Identifiers of no fixed length, but never as short as 4 digits: an account "number" of two
# digits is the first group of one being read out ("four five … seven two nine one").
_LONG_IDENTIFIERS = _w(
    "account order confirmation policy member reference tracking case ticket invoice claim "
    "customer routing booking reservation serial"
)
_NUMBER_QUALIFIERS = _LONG_IDENTIFIERS | _w(
    "model room flight id promo discount extension ext apartment apt unit suite"
)
_SHORTEST_IDENTIFIER = 4
_DIGIT_SEPARATORS = "-./()+"
_CONTEXT_WORDS = 7  # "the last four of my card are", "my phone number is"

# --- finished phrases --------------------------------------------------------------------------

_COMPLETE_PHRASES = frozenset(
    tuple(p.split())
    for p in (
        "yes|yeah|yep|yup|ya|yes sir|yes ma'am|yes please|no|nope|nah|no thanks|no thank you|"
        "okay|ok|okey dokey|okeydokey|alright|all right|sure|sure thing|right|correct|exactly|"
        "absolutely|definitely|of course|perfect|great|awesome|cool|excellent|wonderful|fine|"
        "good|very good|sounds good|sounds great|that works|that's right|that's correct|"
        "that's it|that's all|that's fine|that's great|that's perfect|that'd be great|"
        "not really|not yet|no problem|got it|gotcha|i see|i understand|understood|"
        "makes sense|fair enough|will do|me too|you too|same to you|i'm good|i'm fine|"
        "thanks|thank you|thanks a lot|thanks so much|thank you so much|thank you very much|"
        "much appreciated|appreciate it|i appreciate it|never mind|nevermind|"
        "uhhuh|mmhmm|mhmm|mhm|uh huh|mm hmm|hello|hi|hey|hi there|hello there|good morning|"
        "good afternoon|good evening|bye|goodbye|byebye|bye bye|see you|see ya|take care|"
        "have a good day|have a nice day|have a great day|have a good one|pardon|"
        "excuse me|what|huh|really"
    ).split("|")
)
_LONGEST_PHRASE = max(map(len, _COMPLETE_PHRASES))
_COURTESY_ENDINGS = tuple(
    tuple(p.split())
    for p in (
        "thank you|thanks|thank you so much|thank you very much|thanks so much|thanks a lot|"
        "bye|goodbye|byebye|appreciate it|sounds good|sounds great|sounds perfect|that's all|"
        "that's it|that's everything|a good day|a nice day|a great day|a good one|please"
    ).split("|")
)
_COURTESY_LAST_WORDS = frozenset(phrase[-1] for phrase in _COURTESY_ENDINGS)
_TAGS = _w("right okay ok correct")

# --- punctuation -------------------------------------------------------------------------------

_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u02bc`\u00b4\u2032\uff07", "'"))
_DASHES = "\u2014\u2013\u2010\u2011\u2012\u2015"
# Stripped off a word's edges. The apostrophe is among them: "goin'" keeps its letters and a
# quote is not part of a word.
_PUNCT = (
    string.punctuation + _DASHES + "\u2026\u201c\u201d\u201e\u00ab\u00bb\u2039\u203a\u00bf\u00a1"
)
_CLOSERS = "\"')]}\u201d\u00bb\u203a"
_CONTINUATION_MARKS = ("..", "\u2026", ",", ";", ":", "-", "&", *_DASHES)
_SENTENCE_MARKS = ".?!"
# Words read from the end. Far more than any rule looks back (a wh-word stranding a preposition
# at the end of a long sentence), and it bounds the cost of a monologue's interim transcripts.
_MAX_WORDS = 64
_CLAUSE_MARKS = ",;:" + _DASHES


def classify_ending(text: str) -> EndingVerdict:
    """Classify the end of an STT transcript (interim or final). Never raises."""
    words, tails, last_raw = _tokenize(text)
    if not words:
        return _NO_EVIDENCE
    tail = tails[-1].rstrip(_CLOSERS)
    if tail.endswith(_CONTINUATION_MARKS):
        mark = "..." if tail.endswith((".", "\u2026")) else tail[-1]
        return EndingVerdict(UNFINISHED, f"trailing {mark!r}")
    question = "?" in tail
    start = len(words) - 1
    while start > 0 and not (
        tails[start - 1] and _ends_sentence(tails[start - 1], words[start - 1])
    ):
        start -= 1
    sentence = words[start:]
    # The clause is the sentence's last comma-separated piece ("Hi, can you").
    clause_start = len(words) - 1
    while clause_start > start and not _ends_clause(tails[clause_start - 1]):
        clause_start -= 1
    clause = words[clause_start:]
    return (
        _number(sentence)
        or _unfinished(sentence, clause, question, capital_a=last_raw == "A")
        or _finished(sentence, clause, question)
        or _NO_EVIDENCE
    )


def _tokenize(text: str) -> tuple[list[str], list[str], str]:
    """Lowercased words, the punctuation after each, and the last word as written."""
    words: list[str] = []
    tails: list[str] = []
    last_raw = ""
    for token in text.translate(_APOSTROPHES).split()[-_MAX_WORDS:]:
        core = token.strip(_PUNCT)
        if not core:  # a lone "—" or "..." belongs to the word before it
            if tails:
                tails[-1] += token
            continue
        word = core.lower()
        if word == "cause" and token[0] == "'":
            word = "cuz"  # "'cause", the conjunction; bare "cause" is the noun
        words.append(word)
        # The tail is what strip() took off the end: core[-1] is not punctuation, so its last
        # occurrence is where the core ends.
        tails.append(token[token.rindex(core[-1]) + 1 :])
        last_raw = core
    return words, tails, last_raw


def _ends_sentence(tail: str, word: str) -> bool:
    return any(c in _SENTENCE_MARKS for c in tail) and not (tail == "." and word in _TITLES)


def _ends_clause(tail: str) -> bool:
    return bool(tail) and any(c in _CLAUSE_MARKS for c in tail)


def _first_real(words: list[str]) -> int:
    """Index of the first word that is not a lead-in ("so", "okay", "um", "hi"...)."""
    for i, word in enumerate(words):
        if word not in _LEAD_INS:
            return i
    return len(words)


def _gap_licensed(sentence: list[str]) -> bool:
    """A gap-leaving wh-word heads a still-open clause ("Who am I speaking with").

    A pseudo-cleft closes it: in "what I'd like is to move it to" the wh-clause ends at "is", and
    the final "to" wants its object again.
    """
    open_wh = -1
    for i, word in enumerate(sentence):
        if word in _GAP_WH:
            open_wh = i
        elif (
            open_wh >= 0
            and word in _COPULAS
            and i >= open_wh + 3
            and (sentence[open_wh + 1] in _SUBJECTS or sentence[open_wh + 1] in _NEVER_FINAL)
        ):
            open_wh = -1
    return open_wh >= 0


def _unfinished(
    sentence: list[str], clause: list[str], question: bool, *, capital_a: bool
) -> EndingVerdict | None:
    """UNFINISHED with the reason when the last words cannot end an utterance, else None."""
    n = len(sentence)
    w1 = sentence[-1]
    w2 = sentence[-2] if n > 1 else ""
    w3 = sentence[-3] if n > 2 else ""
    if "-" in w1:
        return None  # "uh-huh", "follow-up", "check-in": compounds end phrases
    if w1 in _FILLERS:
        if question and n == 1:
            return None  # "Hmm?" asks for a repeat
        return EndingVerdict(UNFINISHED, f"filler: {w1}")
    if w1 in _NEVER_FINAL:
        return EndingVerdict(UNFINISHED, f"contraction: {w1}")
    if w1 in _TITLES:
        return EndingVerdict(UNFINISHED, f"title: {w1}")
    if w1 in _DETERMINERS:
        if capital_a and n > 1:
            return None  # "Plan A", "option A": a capital A after the first word is a letter
        return EndingVerdict(UNFINISHED, f"determiner: {w1}")
    if w1 in _SUBJECT_NOUNS_IS:
        return EndingVerdict(UNFINISHED, f"copula: {w1}")
    gap = _gap_licensed(sentence)

    opener = _question_opener(sentence, clause, question, gap)
    if opener is not None:
        return opener
    # "What time do you", "How can I": a wh-question whose verb has not come yet. "Why would
    # I?" and "So do I." are complete.
    if (
        w1 in _PRONOUNS
        and w2 in _VERB_AUX
        and w3 not in _SO_NEITHER
        and "why" not in sentence
        and any(w in _WH for w in sentence[:-2])
    ):
        return EndingVerdict(UNFINISHED, f"question without its verb: {w2} {w1}")

    if w1 in _PREPOSITIONS:
        if gap:
            return None
        if w1 == "to":
            return EndingVerdict(UNFINISHED, "preposition or infinitive: to")
        return EndingVerdict(UNFINISHED, f"preposition: {w1}")
    if w1 in _SOMETIMES_PREPOSITIONS:
        if gap or n == 1 or w2 in _PARTICLE_HEADS or w2 in _COPULAS and w3 in _PRONOUNS:
            return None
        return EndingVerdict(UNFINISHED, f"preposition: {w1}")
    if w1 in _CONJUNCTIONS:
        if w1 == "because" and w2 == "just":
            return None
        return EndingVerdict(UNFINISHED, f"conjunction: {w1}")
    if w1 == "or":
        # "Do you want it shipped, or?" leaves the alternative open on purpose.
        return None if question else EndingVerdict(UNFINISHED, "conjunction: or")
    if w1 == "so":
        if w2 in _SO_COMPLETE_AFTER or n == 1 and question:
            return None
        return EndingVerdict(UNFINISHED, "conjunction: so")
    if w1 == "if":
        return None if w2 in ("what", "as") else EndingVerdict(UNFINISHED, "conjunction: if")
    if w1 == "since":
        return None if w2 == "ever" else EndingVerdict(UNFINISHED, "conjunction: since")
    if w1 == "though":
        return (
            EndingVerdict(UNFINISHED, f"conjunction: {w2} though") if w2 in ("even", "as") else None
        )
    if w1 == "while":
        return None if w2 in _WHILE_NOUN_AFTER else EndingVerdict(UNFINISHED, "conjunction: while")
    if w1 == "then":
        return EndingVerdict(UNFINISHED, f"conjunction: {w2} then") if w2 in _THEN_AFTER else None
    if w1 == "also":
        if w2 in _ALSO_AFTER or w2 in _NEVER_FINAL:
            return EndingVerdict(UNFINISHED, f"adverb before its verb: {w2} also")
        return None
    if w1 in _WANTS_MORE:
        return EndingVerdict(UNFINISHED, f"wants a continuation: {w1}")
    if w1 == "which":
        return None if question or n == 1 else EndingVerdict(UNFINISHED, "relative: which")
    if w1 == "that":
        return _that(sentence, w2, w3, question)
    if w1 in ("this", "these"):
        # A determiner unless a question or copula makes it the pronoun ("Who is this?").
        if question or w2 in _COPULAS or w2 in _WH or w2 == "like":
            return None
        return EndingVerdict(UNFINISHED, f"determiner: {w1}")
    if w1 == "some":
        return None if question else EndingVerdict(UNFINISHED, "determiner: some")
    if w1 == "other" and w2 in _OTHER_AFTER:
        return EndingVerdict(UNFINISHED, f"determiner: {w2} other")
    if w1 == "please" and w2 in _PLEASE_AFTER:
        return EndingVerdict(UNFINISHED, f"request opener: {w2} please")
    if w1 in _SUBJECTS:
        # "and I", "so we"; but "so do I", "than I", and spelled letters ("A, B, I") are not.
        if w2 in _ANY_AUX or w2 == "than" or len(w2) == 1:
            return None
        return EndingVerdict(UNFINISHED, f"subject without a verb: {w1}")
    if w1 in _COPULAS:
        return _copula(sentence, w1, w2, gap)
    if w1 == "be":
        if w2 in _BE_AFTER:
            return EndingVerdict(UNFINISHED, f"copula: {w2} be")
        if w2 in _MODALS and w3 not in _PRONOUNS and w3 not in _WH and not gap:
            return EndingVerdict(UNFINISHED, f"copula: {w2} be")
        return None
    if w1 == "been" and w2 in _NEVER_FINAL:
        return EndingVerdict(UNFINISHED, f"auxiliary: {w2} been")
    if w1 == "got" and w2 in _HAVE_CONTRACTIONS:
        return EndingVerdict(UNFINISHED, f"verb without its object: {w2} got")
    if w1 in _ANY_AUX:
        if w2 in _WH and w1 in _AUX:
            if question and w2 in ("who", "which"):
                return None  # "Who does?" asks about the subject: complete
            return EndingVerdict(UNFINISHED, f"question opener: {w2} {w1}")
        if n == 1 and w1 in _AUX:
            return EndingVerdict(UNFINISHED, f"question opener: {w1}")
        # "I was wondering if you could"
        if w3 in ("if", "whether") and n > 3 and sentence[-4] in _EMBEDDING_VERBS:
            return EndingVerdict(UNFINISHED, f"clause without its verb: {w3} {w2} {w1}")
        return None  # "Yes, I can." "I do."
    if w1 in _WANT_VERBS:
        if any(w in _OBJECT_GIVEN for w in sentence):
            return None
        return EndingVerdict(UNFINISHED, f"verb without its object: {w1}")
    if w1 == "like":
        # "I'd like", "it's like", "kind of like"; not "if you like", "what would you like".
        if w2 in _LIKE_AFTER and not any(w in _OBJECT_GIVEN for w in sentence):
            return EndingVerdict(UNFINISHED, f"verb or comparison without its object: {w2} like")
        return None
    if w1 in _CLAUSE_VERBS and (w2 in _SUBJECTS or w2 == "you" and w3 in _ANY_AUX):
        if any(w in _WH for w in sentence):
            return None  # "What do you think?" "You know what I mean?"
        return EndingVerdict(UNFINISHED, f"verb without its clause: {w2} {w1}")
    if w1 in ("wondering", "hoping") and sentence != ["just", "wondering"]:
        return EndingVerdict(UNFINISHED, f"verb without its clause: {w1}")
    if w1 == "told" and w2 in _COPULAS and not gap:
        return EndingVerdict(UNFINISHED, f"verb without its clause: {w2} told")
    if w1 == "means" and w2 in _MEANS_AFTER:
        return EndingVerdict(UNFINISHED, f"verb without its clause: {w2} means")
    return None


def _question_opener(
    sentence: list[str], clause: list[str], question: bool, gap: bool
) -> EndingVerdict | None:
    """UNFINISHED for a clause-initial inverted auxiliary still waiting for its verb or object:
    "Can you", "Is there", "Could I get", "Would you please"."""
    first = _first_real(clause)
    rest = clause[first:]
    if not rest or rest[0] not in _ANY_AUX:
        return None
    if first and clause[first - 1] in _SO_NEITHER:
        return None  # "So do I." agrees; "So do I need a form" asks: the words cannot tell
    aux = rest[0]
    w1 = rest[-1]
    if len(rest) == 2 and w1 in _PRONOUNS:
        if question and aux in _ECHO_AUX and len(clause) <= 3:
            return None  # "Is it?" "Oh, did you?": a complete echo question
        if aux in _NEG_AUX and first == 0 and len(sentence) > len(clause):
            return None  # a tag: "It's ready, isn't it"
        return EndingVerdict(UNFINISHED, f"question opener: {aux} {w1}")
    if len(rest) == 3 and rest[1] in _PRONOUNS and not gap:
        if w1 in _QUESTION_OPENER_VERBS:
            return EndingVerdict(UNFINISHED, f"question opener: {aux} {rest[1]} {w1}")
        if w1 == "please":
            return EndingVerdict(UNFINISHED, f"request opener: {aux} {rest[1]} please")
    return None


def _that(sentence: list[str], w2: str, w3: str, question: bool) -> EndingVerdict | None:
    """ "that" ends sentences as a pronoun ("Can you do that?") and opens clauses as a
    conjunction ("I think that", "the problem is that"); only the conjunction is unfinished."""
    if question or any(w in _WH for w in sentence):
        return None
    if w2 in _COMPLEMENT_TAKERS_OF_THAT:
        return EndingVerdict(UNFINISHED, f"conjunction: {w2} that")
    if w2 in _COPULAS and w3 and w3 not in _PRONOUNS:
        return EndingVerdict(UNFINISHED, f"conjunction: {w3} {w2} that")
    return None


def _copula(sentence: list[str], w1: str, w2: str, gap: bool) -> EndingVerdict | None:
    """ "My name is", "where is", "there is" want more; "Yes, it is" and "what it is" do not."""
    if w2 in _WH:
        return EndingVerdict(UNFINISHED, f"question opener: {w2} {w1}")
    if len(sentence) == 1 or gap or sentence[0] in _YES_NO and len(sentence) <= 3:
        return None
    if w2 in ("this", "there", "here"):
        return EndingVerdict(UNFINISHED, f"copula: {w2} {w1}")
    if w2 in _PRONOUNS:
        return None
    return EndingVerdict(UNFINISHED, f"copula: {w1}")


# --- numbers -----------------------------------------------------------------------------------


def _digits(word: str) -> int | None:
    """How many digits a spoken or written number word carries, or None if it is not one."""
    if word in _ONES:
        return 1
    if word in _TEENS or word in _TENS:
        return 2
    if "0" <= word[0] <= "9":
        count = 0
        for c in word:
            if "0" <= c <= "9":
                count += 1
            elif c not in _DIGIT_SEPARATORS:
                return None  # "3pm", "1st", "4A"
        return count
    if "-" in word:  # "twenty-five", "five-five-five"
        parts = word.split("-")
        if all(p in _NUMBER_WORDS for p in parts):
            return _count(parts)
    return None


def _count(words: list[str]) -> int:
    """Digits in a run of number words: "twenty five" is two, "eight hundred" three."""
    count = 0
    previous = ""
    for word in words:
        scale = _SCALES.get(word)
        if scale is not None:
            count += scale
        elif not (word in _ONES and previous in _TENS):
            count += _digits(word) or 0
        previous = word
    return count


def _number(sentence: list[str]) -> EndingVerdict | None:
    """Half a number: a dangling "point"/"double"/"dot", or fewer digits than the context owes."""
    n = len(sentence)
    w1 = sentence[-1]
    w2 = sentence[-2] if n > 1 else ""
    if w1 in _SPELLING_JOINERS:  # "john dot", "five five five dash"; not "on the dot"
        if w2 and w2 not in _DETERMINERS:
            return EndingVerdict(UNFINISHED, f"still spelling: {w1}")
        return None
    if w1 in _AFTER_NUMBER:  # "five point", "double"; not "what's the point"
        if w2 and (w2 in _SCALES or _digits(w2) is not None):
            return EndingVerdict(UNFINISHED, f"number still going: {w1}")
        return None
    if w1 == "oh" and (not w2 or _digits(w2) is None):
        return None  # "Oh." is an interjection, not zero
    if w1 not in _SCALES and _digits(w1) is None:
        return None
    start = n - 1
    while start > 0:
        word = sentence[start - 1]
        if word not in _SCALES and _digits(word) is None:
            break
        if word in _ONES and start > 1 and sentence[start - 2] in ("last", "first"):
            break  # "the last four 1 2 3": "four" belongs to the context
        start -= 1
    expected = _expected_digits(sentence[max(0, start - _CONTEXT_WORDS) : start])
    if expected is None:
        return None
    count = _count(sentence[start:])
    low, usual, name = expected
    if count < low:
        owed = f"{usual}" if usual else f"at least {low}"
        return EndingVerdict(UNFINISHED, f"{name} with {count} of {owed} digits")
    if w1 in _TENS:
        return None  # "... ninety" may still become "ninety-one"
    if count == usual or (name, count) in (("phone number", 11), ("ZIP code", 9)):
        return EndingVerdict(FINISHED, f"{name} with {count} digits")
    # ZIP+4 under way, or more than a local number and less than a full one.
    if name == "ZIP code" and count < 9:
        return EndingVerdict(UNFINISHED, f"{name} with {count} of 9 digits")
    if name == "phone number" and 7 < count < 10:
        return EndingVerdict(UNFINISHED, f"{name} with {count} of 10 digits")
    return None


def _expected_digits(context: list[str]) -> tuple[int, int, str] | None:
    """(fewest digits, usual digits, name) that the nearest key word before a number asks for."""
    # "The last four of my card are", "the card ending in": only four digits are owed.
    for k, word in enumerate(context):
        if word in ("four", "4") and k and context[k - 1] == "last" or word in ("ending", "ends"):
            return 4, 4, "last four digits"
    for k in range(len(context) - 1, -1, -1):
        word = context[k]
        before = context[k - 1] if k > 0 else ""
        if word in ("zip", "zipcode", "zip's"):
            return 5, 5, "ZIP code"
        if word in _PHONE_WORDS:
            return 7, 10, "phone number"
        if word in ("card", "card's"):
            return 15, 16, "card number"
        if word in ("ssn", "social"):
            return 9, 9, "social security number"
        if word == "pin":
            return 4, 6, "PIN"
        if word == "cvv":
            return 3, 3, "security code"
        if word in ("code", "code's"):
            if before in ("zip", "postal"):
                return 5, 5, "ZIP code"
            if before == "area":
                return 3, 3, "area code"
            if before == "security":
                return 3, 3, "security code"
            return None
        if word in ("number", "number's"):
            if before in ("card", "credit", "debit"):
                return 15, 16, "card number"
            if before in ("social", "security"):
                return 9, 9, "social security number"
            if before in _PHONE_OWNERS:
                return 7, 10, "phone number"
            if before in _LONG_IDENTIFIERS:
                return _SHORTEST_IDENTIFIER, 0, f"{before} number"
            return None
        if word in _LONG_IDENTIFIERS and word not in ("order", "case", "customer"):
            # "policy 12…" but not "my order is 12 mugs", "in case 2"
            return _SHORTEST_IDENTIFIER, 0, f"{word} number"
        if word in _NUMBER_QUALIFIERS:
            return None
    return None


# --- finished ----------------------------------------------------------------------------------


def _finished(sentence: list[str], clause: list[str], question: bool) -> EndingVerdict | None:
    """FINISHED with the reason when the sentence is complete on its face, else None."""
    n = len(sentence)
    joined = [w.replace("-", "") for w in sentence]  # "uh-huh", "bye-bye"
    if n <= 12 and _is_complete_phrases(joined):
        return EndingVerdict(FINISHED, f"complete answer: {' '.join(sentence)}")
    if joined[-1] in _COURTESY_LAST_WORDS:
        for phrase in _COURTESY_ENDINGS:
            if tuple(joined[-len(phrase) :]) == phrase:
                return EndingVerdict(FINISHED, f"closing: {' '.join(phrase)}")
    # "Yes, I do." "No, it isn't." "Yeah, we can."
    first = 0
    while first < n and joined[first] in _YES_NO:
        first += 1
    rest = joined[first:]
    if (
        first
        and 2 <= len(rest) <= 3
        and rest[0] in _PRONOUNS
        and rest[1] in _ANY_AUX
        and (len(rest) == 2 or rest[2] == "not")
    ):
        return EndingVerdict(FINISHED, f"short answer: {' '.join(sentence)}")
    if question:
        opener = clause[_first_real(clause) :] or clause
        if opener[0] in _WH or opener[0] in _ANY_AUX:
            return EndingVerdict(FINISHED, f"question: {opener[0]} ...?")
        if n > 1 and len(clause) == 1 and joined[-1] in _TAGS:
            return EndingVerdict(FINISHED, f"tag question: {joined[-1]}?")
    return None


def _is_complete_phrases(words: list[str]) -> bool:
    """Is the whole sentence made of complete-answer phrases ("okay, thank you, bye")?"""
    covered = [True] + [False] * len(words)
    for start in range(len(words)):
        if covered[start]:
            for end in range(start + 1, min(len(words), start + _LONGEST_PHRASE) + 1):
                if tuple(words[start:end]) in _COMPLETE_PHRASES:
                    covered[end] = True
    return covered[-1]
