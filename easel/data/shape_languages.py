"""Prompts of the shapes world in other languages than English, with their grammar.

Kandinsky users write prompts in their own language; `tiny-shapes-k22` learns Russian and
German beside English. A prompt says what `shapes.prompt_for` says, any attribute left out
(None): Russian "красный круг на синем фоне", German "ein roter Kreis auf blauem
Hintergrund". Adjectives agree with the noun's gender (and, for the background, with its
case). Prompts are written without "ё" and with "ß", as most writers do; `spellings` names
the other spelling of each such word ("жёлтый", Swiss "weiss"), which the model reads as
the same word.
"""

from __future__ import annotations

from easel.data import shapes

LANGUAGES = ("en", "ru", "de")

# noun, grammatical gender; "shape" is the generic noun of prompts without a shape
_RU_NOUNS = {
    "circle": ("круг", "m"), "square": ("квадрат", "m"), "triangle": ("треугольник", "m"),
    "star": ("звезда", "f"), "heart": ("сердце", "n"), "cross": ("крест", "m"),
    "shape": ("фигура", "f"),
}  # fmt: skip
# colour stem, masculine nominative ending (the stem's hard or soft declension follows it)
_RU_COLORS = {
    "red": "красн", "orange": "оранжев", "yellow": "желт", "green": "зелен", "blue": "син",
    "purple": "фиолетов", "white": "бел", "black": "черн",
}  # fmt: skip
_RU_SOFT = {"blue"}  # синий, синяя, синее, синем
_DE_NOUNS = {
    "circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"),
    "star": ("Stern", "m"), "heart": ("Herz", "n"), "cross": ("Kreuz", "n"),
    "shape": ("Form", "f"),
}  # fmt: skip
_DE_COLORS = {
    "red": "rot", "orange": "orang", "yellow": "gelb", "green": "grün", "blue": "blau",
    "purple": "violett", "white": "weiß", "black": "schwarz",
}  # fmt: skip


def _ru_adjective(color: str, form: str) -> str:
    """`form`: a gender (m, f, n: nominative) or "loc" (masculine prepositional)."""
    soft = color in _RU_SOFT
    endings = {"m": "ий" if soft else "ый", "f": "яя" if soft else "ая",
               "n": "ее" if soft else "ое", "loc": "ем" if soft else "ом"}  # fmt: skip
    return _RU_COLORS[color] + endings[form]


def _russian(shape: str | None, color: str | None, background: str | None) -> str:
    noun, gender = _RU_NOUNS[shape or "shape"]
    words = [_ru_adjective(color, gender)] if color else []
    words.append(noun)
    if background:
        words += ["на", _ru_adjective(background, "loc"), "фоне"]
    return " ".join(words)


def _german(shape: str | None, color: str | None, background: str | None) -> str:
    noun, gender = _DE_NOUNS[shape or "shape"]
    words = ["eine" if gender == "f" else "ein"]
    if color:  # strong endings after "ein": roter Kreis, rotes Herz, rote Form
        words.append(_DE_COLORS[color] + {"m": "er", "n": "es", "f": "e"}[gender])
    words.append(noun)
    if background:  # dative without article: auf blauem Hintergrund
        words += ["auf", _DE_COLORS[background] + "em", "Hintergrund"]
    return " ".join(words)


def prompt_in(language: str, shape: str | None, color: str | None, background: str | None) -> str:
    """The prompt for the given attributes (None: left out) in `language`."""
    if language == "ru":
        return _russian(shape, color, background)
    if language == "de":
        return _german(shape, color, background)
    if language == "en":
        return shapes.prompt_for(shape, color, background)
    raise ValueError(f"`language` must be one of {', '.join(LANGUAGES)} but is {language!r}")


def lexicon(language: str) -> dict[str, str]:
    """Each word the language's prompts use -> the English word it translates (lower case,
    as the tokenizer sees it)."""
    words: dict[str, str] = {}
    for shape in (*shapes.SHAPES, None):
        for color in (*shapes.COLOR_NAMES, None):
            for background in (*shapes.COLOR_NAMES, None):
                english = shapes.prompt_for(shape, color, background).split()
                ours = prompt_in(language, shape, color, background).lower().split()
                words |= dict(zip(ours, _aligned(english, ours, shape), strict=True))
    return words


_OTHER_SPELLINGS = {"ru": (("желт", "жёлт"), ("зелен", "зелён"), ("черн", "чёрн")),
                   "de": (("ß", "ss"),)}  # fmt: skip


def spellings(language: str) -> dict[str, str]:
    """Other spelling -> the spelling prompts use, for each word of `lexicon(language)`."""
    others = {}
    for word in lexicon(language):
        for written, other in _OTHER_SPELLINGS.get(language, ()):
            if written in word:
                others[word.replace(written, other)] = word
    return others


def _aligned(english: list[str], ours: list[str], shape: str | None) -> list[str]:
    """The English word of each of `ours` (both prompts name the same attributes)."""
    noun = shape or "shape"
    content = [w for w in english if w not in ("a", "on")]  # [colour] noun [bg background]
    function = {"на": "on", "auf": "on", "ein": "a", "eine": "a"}
    out, rest = [], iter(content)
    for word in ours:
        out.append(function[word] if word in function else next(rest))
    assert noun in out, (english, ours)
    return out
