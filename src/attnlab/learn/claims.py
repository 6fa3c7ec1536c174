"""Grading a written answer by the claims it makes, not by the words it contains.

A rubric point is a *claim*: a predicate (a pattern such as "scores with a small feed-forward network") stated
about a *subject* (such as additive attention). The checker reads the answer the way a careful marker skims it,
in plain Python with no language model:

1. **Structure.** Text with no sentence structure (a list of keywords: almost no function words, no verb,
   repeated terms) earns nothing, whatever words it contains. Inside an answer, a clause that is itself a keyword
   list ("sqrt fast matmul scaled") or a bare fragment ("... and the fast and the transformer") carries no claim.
2. **Sentences and clauses.** The answer is split into sentences, and each sentence into clauses at commas,
   semicolons, colons and connectives (but, whereas, while, and, which, ...).
3. **Attachment.** Each subject mention has a role: *subject*, *object* (after a verb or a preposition: "uses the
   dot product") or *contrast* (after "unlike", "than", "compared to", "instead of", ...). A predicate is attached
   to, in this order: the nearest subject-role mention before it in its clause; the nearest object there; the
   first non-contrast mention after it in the clause; the antecedent of a relative clause ("..., which uses a
   network"); the nearest mention before it in the sentence; the first one after it (unless a pronoun points
   back); else the subject carried over from the previous sentence ("It is faster.").
4. **Polarity.** A negation between the subject and the predicate, inside the clause ("additive does NOT use a
   network"), turns the statement around; "not only" and "no loss of" are not negations.
5. **Verdict per claim.** A claim is *supported* when its predicate is stated, un-negated, about a right
   subject; *contradicted* when it is denied about a right subject, when an opposite predicate is stated
   ("FlashAttention approximates attention"), when it is said of both subjects at once ("both use a tanh
   network"), or when it is stated only about the wrong subject (swapped definitions). Denials win over support.
6. **Verdict per answer.** "correct" needs ``Idea.need`` claims supported and none contradicted; "partial", more
   supported than contradicted; anything else is "incorrect". A prompt with several valid ideas (the efficiency
   prompt) is graded on the idea the answer explains best.

What this cannot do, and the verdict says so: it cannot judge reasoning, a claim phrased in words its patterns do
not know, or whether a true claim is relevant. It only says which of the listed claims it found, about which
subject, and where.

>>> r = Rubric("toy", "Compare A and B.", "A is fast.", {"A": r"\\ba\\b", "B": r"\\bb\\b"},
...            [Idea("toy", [Claim("fast", "A is fast", [Link(("A",), r"fast")], [Link(("B",), r"fast")])], 1)])
>>> grade(r, "A is fast, but b is not.").label, grade(r, "B is fast, but a is not.").label
('correct', 'incorrect')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

LABELS = ("correct", "partial", "incorrect")

FUNCTION_WORDS = frozenset("""
a an the of to in on for by with from as at into onto over under between through about across after before
is are was were be been being am it its this that these those they them their there here he she we you your our
and or but not no nor than then so which who whom whose what when where why how because since while whereas
although though if unless until each every all both some any one only also just more less most very such same
other another own can could may might will would should must do does did has have had done having within
without among inside outside per via upon during against along toward towards beyond except around near
""".split())

# common verbs (base forms; -s/-es/-ed/-d/-ing forms are generated) and the auxiliaries above: a clause needs one
_VERB_BASES = """
use compute score take give let allow mean make attend look come learn split project concatenate combine share
store need keep reduce work get apply see focus capture run scale divide multiply add produce map turn weigh weight
mix merge join stack send pass read write build form hold replace avoid save cut shrink grow cost become depend
decide choose pick put match compare measure find lose miss help solve fix introduce propose power rely exist
speed lower spread process skip limit restrict block mask cache load move tile fit stay differ vary contain
involve include require ask query refer provide create generate predict translate encode decode summarise
summarize caption transcribe understand track specialise specialize operate calculate sum normalise normalize
approximate materialise materialize recompute rescale reorder group connect treat call belong happen act serve
""".split()
AUXILIARIES_AND_MODALS = frozenset("is are was were has have had does did can could may might will would should "
                                   "must".split())
_IRREGULAR = ("is are was were be been being am has have had do does did done can could may might will would "
              "should must having getting sees saw seen took taken gave given made ran split put cut kept held "
              "built sent read written wrote lost found chose chosen became grown grew")


def _verb_forms(base: str) -> set:
    stem = base[:-1] if base.endswith("e") else base
    ends_s = base.endswith(("s", "sh", "ch", "x", "z"))
    return {base, base + ("es" if ends_s else "s"), stem + "ed", stem + "ing", base + "d"}


VERBS = frozenset(set(_IRREGULAR.split()).union(*(_verb_forms(b) for b in _VERB_BASES)))
# finite forms that are not also plural nouns ("tiles", "scores", "weights" are not evidence of a sentence)
_NOUN_LIKE = set("score weight mask cache tile block group split sum cost query process limit map work need "
                 "use view kind type pattern head".split())
FINITE = frozenset(w for w in VERBS if w in AUXILIARIES_AND_MODALS or any(
    w in (b + "s", b + "es") for b in _VERB_BASES if b not in _NOUN_LIKE)) | {"uses"}

NEGATIONS = re.compile(r"\b(not|no|never|neither|nor|without|lacks?|lacking|none|cannot|instead of|rather than|"
                       r"fails? to|unable to|avoids?|doesnt|dont|isnt|arent)\b")
# a subject right after one of these is the thing being contrasted, not the one the clause talks about
CONTRAST_MARKERS = re.compile(r"\b(unlike|than|compared (to|with)|in contrast (to|with)|as opposed to|instead of|"
                              r"rather than|versus|vs|over|like|such as)\s+(the\s+|a\s+|an\s+)?$")
# a subject right after a verb or one of these is an object ("uses the dot product", "attends with several heads")
OBJECT_MARKERS = re.compile(r"\b(with|by|via|through|of|from|to|into|on)\s+(the\s+|a\s+|an\s+|its\s+|their\s+)?$")
AUXILIARIES = frozenset("is are was were be been being am has have had do does did can could may might will would "
                        "should must".split())
CLAUSE_BREAK = re.compile(r"[,;:()]|\s-+\s|\b(but|whereas|while|although|though|however|and|because|since|so|"
                          r"which|who|whose|whereby|instead|then|yet|unlike)\b")
BOTH = re.compile(r"\b(both|each of them|the two of them|either)\b")
COORDINATED = re.compile(r"\s*(,|and|or|&|/)\s*(the\s+)?")
PRONOUN = re.compile(r"\b(it|they|this|these|its|their|both|them)\b")
RELATIVE = re.compile(r"[\s,;(]*(which|who|whose|that|whereby|where|in which)\b")


@dataclass(frozen=True)
class Link:
    """A predicate pattern stated about one of ``subjects``."""
    subjects: tuple
    pattern: str


@dataclass(frozen=True)
class Claim:
    key: str
    text: str                   # what the learner is told was checked
    support: list               # Links that state the claim
    against: list = field(default_factory=list)   # Links that state its opposite (or the swapped definition)


@dataclass(frozen=True)
class Idea:
    """A group of claims graded together: the one topic of most prompts, or one of several valid ideas."""
    name: str
    claims: list
    need: int                   # supported claims (and no contradiction) for "correct"


@dataclass(frozen=True)
class Rubric:
    key: str
    question: str
    model_answer: str
    subjects: dict              # name -> regex of its mentions
    ideas: list                 # the answer is graded on its best idea (one, unless the prompt accepts several)


@dataclass
class Finding:
    """One predicate found in the answer, attached to a subject (or to none)."""
    subject: str | None
    negated: bool
    sentence: str
    said: str                   # the words that matched
    shared: bool = False        # said of two subjects at once ("additive and dot-product attention both ...")


@dataclass
class ClaimResult:
    claim: Claim
    status: str                 # "supported", "contradicted" or "absent"
    evidence: str = ""          # the sentence the decision came from


@dataclass
class Grade:
    label: str                  # one of LABELS
    reason: str                 # one line: why this label
    idea: Idea | None
    results: list               # ClaimResult for each claim of ``idea``
    structured: bool

    @property
    def supported(self) -> int:
        return sum(r.status == "supported" for r in self.results)

    @property
    def contradicted(self) -> int:
        return sum(r.status == "contradicted" for r in self.results)


# --- reading the text ------------------------------------------------------------------------------------------
def normalise(text: str) -> str:
    """Lower case, contractions and abbreviations spelled out, unicode punctuation folded.

    >>> normalise("Additive DOESN'T use q·k, e.g. BERT’s")
    "additive does not use q.k, eg bert's"
    """
    t = text.lower().replace("’", "'").replace("‘", "'").replace("·", ".").replace("×", "x")
    t = re.sub(r"[—–]", " - ", t)
    t = re.sub(r"\b(can)'?t\b", r"\1 not", t)
    t = re.sub(r"\bwon'?t\b", "will not", t)
    t = re.sub(r"n't\b", " not", t)
    t = re.sub(r"\b(does|do|is|are|was|were|has|have|did|would|could|should)nt\b", r"\1 not", t)
    for short, full in (("e.g.", "eg"), ("i.e.", "ie"), ("etc.", "etc"), ("vs.", "vs"), ("cf.", "cf")):
        t = t.replace(short, full)
    t = re.sub(r"\bnot (only|just|merely)\b", r"\1", t)           # "not only ... but also" denies nothing
    t = re.sub(r"\b(almost |nearly |with )?no (loss|drop|degradation|penalty)\b", r"\1little \2", t)   # a small cost
    return re.sub(r"[ \t]+", " ", t).strip()


def sentences(text: str) -> list:
    """Sentences of normalised text: split at . ! ? followed by a space (so "q.k" stays whole) and at newlines."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip(" .!?")]


def words(text: str) -> list:
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text)


@dataclass
class Structure:
    words: int
    function_ratio: float
    verbs: int
    repeats: int                # a content word repeated right after itself ("heads heads")

    @property
    def ok(self) -> bool:
        if self.words < 4 or self.verbs == 0 or self.function_ratio < 0.07:
            return False
        return self.repeats < 2 and not (self.repeats and self.function_ratio < 0.3)


def structure(text: str) -> Structure:
    """How much the text looks like sentences: share of function words, verbs, immediate repeats.

    >>> structure("tanh similarity scale fast rnn").ok, structure("Additive attention uses a tanh network.").ok
    (False, True)
    """
    ws = words(text)
    n = max(len(ws), 1)
    fw = sum(w in FUNCTION_WORDS for w in ws)
    verbs = sum(w in VERBS for w in ws)
    repeats = sum(a == b and len(a) > 2 and a not in FUNCTION_WORDS for a, b in zip(ws, ws[1:]))  # not "q q"
    return Structure(len(ws), fw / n, verbs, repeats)


def _sentence_has_clause(sentence: str) -> bool:
    """A sentence can carry a claim when it has a verb, or is a note of the form "subject: what it does"."""
    ws = words(sentence)
    return len(ws) >= 3 and (any(w in VERBS for w in ws) or ":" in sentence)


CONNECTIVE = re.compile(r"^[\s,;:()-]*(but|whereas|while|although|though|however|and|because|since|so|which|who|"
                        r"whereby|instead|then|yet|unlike)?\b")


def _clause_can_carry(clause: str, names_subject: bool) -> bool:
    """Whether a predicate in this clause can count. Not in a keyword list (four words or more, no function word,
    no finite verb, no note sign ":" or "="), and not in a bare fragment of one to three content words with no verb
    ("... and the fast and the transformer", "is parallel, subspace, specialised"): a claim needs a statement
    around it (a list's first item sits in the clause with the verb, "used in translation, T5", so it counts)."""
    if ":" in clause or "=" in clause:
        return True
    ws = [w for w in words(clause[CONNECTIVE.match(clause).end():]) if w not in ("the", "a", "an")]
    if len(ws) >= 4:
        return any(w in FUNCTION_WORDS or w in FINITE for w in ws)
    return names_subject or any(w in FUNCTION_WORDS or w in VERBS for w in ws)


@dataclass
class _Mention:
    subject: str
    start: int
    end: int
    role: str                   # "subject", "object" (after a verb or preposition) or "contrast" (after "unlike")


def _role(sentence: str, start: int) -> str:
    before = sentence[:start]
    if CONTRAST_MARKERS.search(before):
        return "contrast"
    if OBJECT_MARKERS.search(before):
        return "object"
    ws = words(before)
    while ws and ws[-1] in ("the", "a", "an", "its", "their", "all", "both", "several", "many", "multiple", "some",
                            "two", "few", "a few"):
        ws.pop()
    if len(ws) >= 2 and ws[-1] in VERBS and ws[-1] not in AUXILIARIES:     # not an imperative's first word
        return "object"
    return "subject"


def _mentions(rubric: Rubric, sentence: str) -> list:
    """Subject mentions in a sentence, longest first where they overlap ("single head" beats "head")."""
    found = []
    for name, pattern in rubric.subjects.items():
        for m in re.finditer(pattern, sentence):
            found.append((m.end() - m.start(), m.start(), m.end(), name))
    taken, out = [], []
    for length, start, end, name in sorted(found, key=lambda f: (-f[0], f[1])):
        if any(start < e and s < end for s, e in taken):
            continue
        taken.append((start, end))
        out.append(_Mention(name, start, end, _role(sentence, start)))
    return sorted(out, key=lambda m: m.start)


def _clauses(sentence: str) -> list:
    """(start, end) spans of the clauses of a sentence."""
    cuts = [0] + [m.start() for m in CLAUSE_BREAK.finditer(sentence)] + [len(sentence)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _within_names(s: str, start: int, end: int, mentions) -> bool:
    """Whether every word of s[start:end] belongs to a subject's name ("local windowed attention")."""
    return all(any(x.start <= start + w.start() and start + w.end() <= x.end for x in mentions)
               for w in re.finditer(r"\w+", s[start:end]))


def _relative_antecedent(s, clauses, mentions, c_start) -> list:
    """[the mention a relative clause refers to] when the clause at c_start continues one that began with
    "which", "where", ... and named no subject since ("unlike X, where q, k and v come from the same ...")."""
    for a, b in reversed([c for c in clauses if c[0] <= c_start]):
        if any(a <= m.start < b for m in mentions):
            return []
        if RELATIVE.match(s[a:]):
            return [m for m in mentions if m.end <= a][-1:]
    return []


class Reader:
    """The answer read once: sentences, clauses, subject mentions, and the subject carried over between them."""

    def __init__(self, rubric: Rubric, text: str):
        self.rubric = rubric
        self.sentences = []     # (sentence, clauses, mentions, carried-in subject, can carry a claim)
        carried = None
        for s in sentences(normalise(text)):
            mentions = _mentions(rubric, s)
            self.sentences.append((s, _clauses(s), mentions, carried, _sentence_has_clause(s)))
            named = ([m for m in mentions if m.role == "subject"] or [m for m in mentions if m.role == "object"])
            if named:
                carried = named[-1].subject

    def findings(self, pattern: str) -> list:
        """Every place ``pattern`` is stated, with the subject it is attached to and its polarity."""
        out = []
        for s, clauses, mentions, carried, usable in self.sentences:
            if not usable:
                continue
            for m in re.finditer(pattern, s):
                if _within_names(s, m.start(), m.end(), mentions):
                    continue                        # part of a subject's name ("linear attention"), not a claim
                if not any(_clause_can_carry(s[a:b], any(a <= x.start < b for x in mentions))
                           for a, b in clauses if a < m.end() and m.start() < b):
                    continue                        # "and the fast", "subspace concat projection"
                out.append(self._attach(s, clauses, mentions, carried, m.start(), m.end()))
                out[-1].said = m.group(0)
        return out

    @staticmethod
    def _attach(s, clauses, mentions, carried, start, end) -> Finding:
        """The subject a predicate at s[start:end] is said of (the order of preference is the module docstring's
        step 3), and whether a negation stands between them in the clause."""
        c_start, c_end = next((a, b) for a, b in clauses if a <= start < b)
        outside = [m for m in mentions if m.end <= start or m.start >= end]
        before = [m for m in outside if m.end <= start]
        before_clause = [m for m in before if m.start >= c_start]
        after_clause = [m for m in outside if m.start >= end and m.end <= c_end and m.role != "contrast"]
        choices = [
            [m for m in before_clause if m.role == "subject"][-1:],
            [m for m in before_clause if m.role == "object"][-1:],
            after_clause[:1],
            _relative_antecedent(s, clauses, mentions, c_start),                              # "..., which"
            [m for m in before if m.role == "subject"][-1:],
            [m for m in before if m.role == "object"][-1:],
        ]
        later = [m for m in outside if m.start >= end and m.role != "contrast"]
        if not PRONOUN.search(s[c_start:start]):       # "when a model needs context ..., it uses self-attention"
            choices.append(later[:1])
        chosen = next((c[0] for c in choices if c), None)
        subject = chosen.subject if chosen else carried
        scope_from = chosen.end if chosen and chosen.start >= c_start and chosen.end <= start else c_start
        negated = bool(NEGATIONS.search(s[scope_from:start]))
        shared = chosen is not None and (bool(BOTH.search(s[c_start:start])) or any(
            m.end <= chosen.start and m.subject != chosen.subject and COORDINATED.fullmatch(s[m.end:chosen.start])
            for m in mentions))
        return Finding(subject, negated, s, "", shared)


# --- grading ---------------------------------------------------------------------------------------------------
def judge(reader: Reader, claim: Claim) -> ClaimResult:
    """Supported, contradicted or absent: see the module docstring, step 5.

    An ``against`` link about one of the claim's own subjects is a *denial* ("FlashAttention approximates"): it
    always contradicts. One about another subject is a *misattribution* (the definition given to the wrong
    subject): it contradicts unless the claim is also stated about the right subject, since "both" is then a
    mistake about the other subject, which that subject's own claims catch.
    """
    own = {s for link in claim.support for s in link.subjects}
    yes, denied, misattributed = [], [], []
    for link in claim.support:
        for f in reader.findings(link.pattern):
            if f.subject in link.subjects:
                (denied if f.negated else yes).append(f)
    for link in claim.against:
        for f in reader.findings(link.pattern):
            if f.subject in link.subjects and not f.negated:
                (denied if f.subject in own or f.shared else misattributed).append(f)
    if denied:
        return ClaimResult(claim, "contradicted", denied[0].sentence)
    if yes:
        return ClaimResult(claim, "supported", yes[0].sentence)
    if misattributed:
        return ClaimResult(claim, "contradicted", misattributed[0].sentence)
    return ClaimResult(claim, "absent")


def grade(rubric: Rubric, text: str) -> Grade:
    """The label of an answer: correct, partial or incorrect, with the claim-by-claim results behind it."""
    if not isinstance(rubric, Rubric):
        raise TypeError(f"rubric must be a learn.claims.Rubric (see learn.rubrics.RUBRICS), got "
                        f"{type(rubric).__name__}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str (the answer), got {type(text).__name__}")
    shape = structure(text)
    if shape.words == 0:
        return Grade("incorrect", "the answer is empty", None, [], False)
    if not shape.ok:
        return Grade("incorrect", "no sentence structure (a list of keywords earns nothing: the checker reads "
                                  "claims, and a claim needs a subject and a verb)", None, [], False)
    reader = Reader(rubric, text)
    if not any(m for _, _, ms, _, _ in reader.sentences for m in ms):
        return Grade("incorrect", "the answer does not name what the question asks about", None,
                     [ClaimResult(c, "absent") for c in rubric.ideas[0].claims], True)
    scored = []
    for idea in rubric.ideas:
        results = [judge(reader, c) for c in idea.claims]
        sup = sum(r.status == "supported" for r in results)
        con = sum(r.status == "contradicted" for r in results)
        scored.append((sup - con, sup, idea, results, con))
    contradicted_anywhere = sum(s[4] for s in scored)
    named = [m.subject for _, _, ms, _, _ in reader.sentences for m in ms]
    net, sup, idea, results, con = max(scored, key=lambda s: (s[0], s[1], named.count(_primary(s[2]))))
    if contradicted_anywhere and not con:       # the best idea is clean but another idea's claim is wrong
        con = contradicted_anywhere
        net = sup - con
    if con == 0 and sup >= idea.need:
        label, reason = "correct", f"{sup} of {len(results)} claims stated about the right subject, none wrong"
    elif net >= 1:
        label, reason = "partial", (f"{sup} of {len(results)} claims stated about the right subject"
                                    + (f", {con} contradicted or attached to the wrong subject" if con else "")
                                    + (f" ({idea.need} needed)" if con == 0 else ""))
    else:
        label, reason = "incorrect", (f"{con} claim(s) contradicted or attached to the wrong subject, {sup} right"
                                      if con else "none of the claims was found")
    return Grade(label, reason, idea, results, True)


def _primary(idea: Idea) -> str:
    """The subject an idea is about: the one its first claim is stated about."""
    return idea.claims[0].support[0].subjects[0]


MARK = {"supported": "x", "contradicted": "!", "absent": " "}


def explain(rubric: Rubric, g: Grade) -> str:
    """The verdict as the learner reads it: what was checked, what was found, and what was not checked."""
    n_claims = sum(len(i.claims) for i in rubric.ideas)
    scope = (f"This checks {n_claims} claims" if len(rubric.ideas) == 1 else
             f"This checks {n_claims} claims ({len(rubric.ideas[0].claims)} for each of the {len(rubric.ideas)} "
             f"ideas it knows: {', '.join(i.name for i in rubric.ideas)}; you are graded on the idea you explain "
             f"best)")
    lines = [f"{g.label.capitalize()}: {g.reason}."]
    if g.idea is not None and len(rubric.ideas) > 1:
        lines.append(f"Idea graded: {g.idea.name}.")
    for r in g.results:
        note = {"supported": "", "absent": " (not found)",
                "contradicted": " (contradicted, or said of the wrong subject)"}[r.status]
        lines.append(f"  [{MARK[r.status]}] {r.claim.text}{note}")
        if r.status == "contradicted":
            lines.append(f"      in: \"{r.evidence}\"")
    lines.append(f"{scope}, each as a statement about its subject; it cannot judge your reasoning, and a true "
                 f"claim in words it does not know is not counted.")
    return "\n".join(lines)
