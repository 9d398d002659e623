"""Transcripts: the character tokenizer and the assistant-domain sentences.

The tokenizer maps normalized text to ids over a fixed 29-symbol vocabulary:
``0`` is the RNN-T/CTC blank, then space, ``a``-``z`` and the apostrophe
(the LibriSpeech character set, lower-cased).

The sentence generator writes requests to an on-device assistant ("set an
alarm for seven thirty a m", "text john i'm running late") from a small
grammar: intents made of templates whose ``{slots}`` expand to word lists
(names, cities, rooms, devices, apps, spelled-out numbers and times...).
The vocabulary (:func:`domain_vocabulary`) is computed from the grammar
itself, so it cannot drift from what :func:`domain_sentences` produces. A
closed domain of a few hundred words is what makes word error rates
comparable at the scale of a short training run (docs: FINDINGS, "Speech
data and training speed").

Example:
  >>> tok = Tokenizer()
  >>> tok.encode("Call Maria!")
  [4, 2, 13, 13, 1, 14, 2, 19, 10, 2]
  >>> tok.decode(tok.encode("Call Maria!"))
  'call maria'
  >>> domain_sentences(2, seed=0)
  ['set the volume to seventy five percent', 'remind me to take out the trash tonight at half past three']
"""

from __future__ import annotations

import random
import re
import unicodedata

__all__ = ["MAX_WORDS", "MIN_WORDS", "Tokenizer", "domain_sentences", "domain_vocabulary", "normalize"]

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_VOCAB = ("<blank>", " ", *_LETTERS, "'")
_DIGITS = re.compile(r"[0-9]")
# Hyphens, underscores and slashes join words ("wi-fi"): they become spaces
# rather than gluing the words together.
_SEPARATORS = re.compile(r"[-_/]")
_DROP = re.compile(r"[^a-z' ]")
_SPACES = re.compile(r" +")


def normalize(text: str) -> str:
    """Lower-cases ``text`` and keeps only ``a``-``z``, apostrophes and single spaces.

    Accented letters lose their accents (``café`` -> ``cafe``), hyphens,
    underscores and slashes become spaces, other punctuation is dropped.
    Digits are refused rather than silently dropped or guessed ("7:30" could
    be "seven thirty" or "half past seven"): spell numbers out first.

    Args:
      text: any string.

    Returns:
      The normalized text, possibly empty.

    Raises:
      ValueError: ``text`` contains digits (the message names them).

    Example:
      >>> normalize("  Hello,   WORLD -- it's me!")
      "hello world it's me"
    """
    if not isinstance(text, str):
        raise TypeError(f"Expected a str. Received: {type(text).__name__}")
    digits = sorted(set(_DIGITS.findall(text)))
    if digits:
        raise ValueError(
            f"Expected text without digits (spell numbers out, e.g. 'seven thirty'). "
            f"Received digits {''.join(digits)!r} in {text!r}"
        )
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("\u2019", "'").replace("\t", " ").replace("\n", " ")
    text = _DROP.sub("", _SEPARATORS.sub(" ", text))
    return _SPACES.sub(" ", text).strip()


class Tokenizer:
    """Characters <-> ids: blank (0), space (1), ``a``-``z`` (2-27), apostrophe (28).

    Example:
      >>> tok = Tokenizer()
      >>> tok.vocab_size
      29
      >>> tok.decode([0, 9, 10, 0])
      'hi'
    """

    blank_id = 0

    def __init__(self):
        self.vocab = list(_VOCAB)
        self._index = {c: i for i, c in enumerate(self.vocab) if i != self.blank_id}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def normalize(self, text: str) -> str:
        """See :func:`normalize`."""
        return normalize(text)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``normalize(text)`` (never the blank).

        Raises:
          ValueError: ``text`` contains digits.
        """
        return [self._index[c] for c in normalize(text)]

    def decode(self, ids) -> str:
        """The text of ``ids``; blanks are skipped.

        Raises:
          ValueError: an id is outside ``0..vocab_size - 1``.
        """
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"Expected ids in 0..{self.vocab_size - 1}. Received: {i}")
            if i != self.blank_id:
                out.append(self.vocab[i])
        return "".join(out)

    def to_config(self) -> dict:
        """A JSON-able description; :meth:`from_config` restores it."""
        return {"kind": "char", "vocab": self.vocab[1:], "blank_id": self.blank_id}

    @classmethod
    def from_config(cls, config: dict) -> Tokenizer:
        """The tokenizer a :meth:`to_config` result describes.

        Raises:
          ValueError: ``config`` describes another vocabulary (this one is fixed).
        """
        expected = cls().to_config()
        if dict(config) != expected:
            raise ValueError(f"Expected the character tokenizer config {expected}. Received: {config}")
        return cls()

    def __repr__(self):
        return f"Tokenizer(vocab_size={self.vocab_size})"


# ----------------------------------------------------------------- numbers

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _spell(n: int) -> str:
    """0..999 in words ("one hundred twenty five")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + _spell(rest))


def _clock_minutes(m: int) -> str:
    return "oh " + _ONES[m] if m < 10 else _spell(m)


# ----------------------------------------------------------------- the grammar
#
# Each slot is a list of alternatives; an alternative may contain {slots} of
# its own. Intents are (weight, templates). Everything is data, so the
# vocabulary is derived from it (domain_vocabulary).

_SLOTS: dict[str, list[str]] = {
    "name": ["maria", "john", "sarah", "david", "emma", "michael", "olivia", "james", "sophia", "daniel",
             "anna", "kevin", "laura", "alex", "grace", "ryan", "julia", "mark", "lucy", "peter", "nina",
             "kate", "tom", "lisa", "ben", "amy", "jack", "rachel", "hannah", "luis", "priya", "mom", "dad",
             "grandma"],
    "contact": ["{name}", "{name} {surname}", "{name} on the {phone}"],
    "surname": ["smith", "garcia", "chen", "patel", "miller", "brown"],
    "phone": ["cell", "office", "home phone"],
    "city": ["boston", "chicago", "seattle", "denver", "austin", "dallas", "miami", "atlanta", "phoenix",
             "portland", "london", "paris", "berlin", "madrid", "rome", "tokyo", "sydney", "toronto", "dublin",
             "new york", "los angeles", "san francisco", "new orleans", "mexico city"],
    "room": ["kitchen", "living room", "bedroom", "bathroom", "office", "garage", "hallway", "basement",
             "dining room", "porch", "backyard", "laundry room"],
    "switchable": ["lights", "lamp", "fan", "heater", "air conditioner", "television", "speaker",
                   "coffee maker", "night light", "radio"],
    "appliance": ["dishwasher", "washing machine", "dryer", "oven", "sprinklers", "vacuum", "coffee maker"],
    "color": ["red", "blue", "green", "yellow", "purple", "orange", "pink", "white", "warm white"],
    "door": ["front door", "back door", "garage door", "side door"],
    "app": ["camera", "calculator", "calendar", "maps", "photos", "settings", "clock", "notes", "email",
            "browser", "podcasts", "news"],
    "setting": ["bluetooth", "wi fi", "airplane mode", "do not disturb", "the flashlight", "dark mode",
                "the hotspot"],
    "genre": ["jazz", "rock", "classical music", "country", "hip hop", "pop", "blues", "reggae", "folk",
              "piano music", "christmas music", "salsa"],
    "playlist": ["workout", "running", "dinner", "party", "relaxing", "focus", "morning", "road trip",
                 "sleep", "study", "favorites"],
    "decade": ["sixties", "seventies", "eighties", "nineties"],
    "topic": ["history", "science", "cooking", "space", "sports", "technology", "health", "travel"],
    "subject": ["budget", "project", "trip", "party", "schedule", "report", "presentation", "contract"],
    "day": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"],
    "when": ["today", "tonight", "tomorrow", "tomorrow morning", "tomorrow night", "this weekend",
             "this afternoon", "this evening", "on {day}", "next week", "on {day} morning"],
    "item": ["milk", "eggs", "bread", "butter", "cheese", "apples", "bananas", "coffee", "tea", "rice",
             "pasta", "chicken", "tomatoes", "potatoes", "orange juice", "paper towels", "dish soap",
             "batteries", "dog food", "cereal"],
    "task": ["buy {item}", "call {name}", "pay the rent", "pay the electric bill", "take out the trash",
             "water the plants", "feed the cat", "walk the dog", "pick up the kids", "pick up {name}",
             "book a dentist appointment", "renew my passport", "return the library books",
             "charge my phone", "take my medicine", "send the {subject}", "check the mail",
             "do the laundry", "wish {name} a happy birthday", "lock the {door}"],
    "place": ["home", "to work", "to the {business}"],
    "business": ["coffee shop", "gas station", "pharmacy", "grocery store", "restaurant", "pizza place",
                 "bakery", "hospital", "bank", "post office", "library", "gym", "park", "hotel", "airport",
                 "train station", "movie theater"],
    "team": ["yankees", "lakers", "patriots", "red sox", "warriors", "giants", "bulls"],
    "unit": ["cups", "ounces", "grams", "pounds", "kilograms", "miles", "kilometers", "inches", "feet",
             "meters", "liters"],
    "food": ["pasta", "eggs", "rice", "pizza", "cookies", "bread", "chicken", "potatoes", "tea", "laundry"],
    "message": ["i'm running late", "i'll be there in {duration}", "on my way home", "see you at {time}",
                "can you call me back", "dinner is ready", "don't forget the {item}", "happy birthday",
                "i love you", "where are you", "the meeting moved to {time}", "let's meet at the {business}",
                "i'm at the {business}", "can you pick up some {item}", "start without me",
                "call me when you're free", "we're out of {item}", "good night"],
    "relation": ["in", "near"],
    "small": [_spell(n) for n in range(1, 13)],
    "count": [_spell(n) for n in range(2, 21)] + [_spell(n) for n in (25, 30, 40, 45, 50, 60, 90)],
    "percent": [_spell(n) for n in range(10, 101, 10)] + [_spell(n) for n in (5, 15, 25, 35, 45, 55, 65, 75, 85)],
    "degrees": [_spell(n) for n in range(60, 81)],
    "hour": [_ONES[h] for h in range(1, 13)],
    "ampm": ["a m", "p m", "in the morning", "in the evening", "at night", "in the afternoon"],
    "time": ["{hour} {ampm}", "{hour} {minutes}", "{hour} {minutes} {ampm}", "{hour} o'clock",
             "half past {hour}", "quarter past {hour}", "quarter to {hour}", "noon", "midnight"],
    "minutes": [_clock_minutes(m) for m in (5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55)] + ["oh one", "oh two"],
    "duration": ["{count} minutes", "{count} seconds", "{small} hours", "one minute", "one hour",
                 "an hour", "a minute", "half an hour", "an hour and a half", "{count} minutes"],
    "number": [_spell(n) for n in range(21)] + [_spell(n) for n in (30, 40, 50, 64, 75, 99, 100, 250)],
}

# (weight, templates): the weight says how often the intent is drawn.
_INTENTS: dict[str, tuple[float, list[str]]] = {
    "smart_home": (3.0, [
        "turn on the {room} {switchable}", "turn off the {room} {switchable}",
        "turn on the {switchable} in the {room}", "turn off the {switchable} in the {room}",
        "switch off all the lights", "dim the {room} lights to {percent} percent",
        "set the {room} lights to {percent} percent", "turn the {room} lights {color}",
        "make the lights {color}", "set the thermostat to {degrees} degrees",
        "set the {room} to {degrees} degrees", "is the {door} locked", "lock the {door}",
        "unlock the {door}", "open the garage door", "close the garage door", "start the {appliance}",
        "stop the {appliance}", "is the {appliance} done", "turn the heat up {small} degrees",
        "turn the heat down a little", "is anyone at the {door}", "show me the {door} camera",
    ]),
    "alarm": (1.5, [
        "set an alarm for {time}", "set an alarm for {time} {when}", "wake me up at {time}",
        "wake me up at {time} {when}", "cancel my {time} alarm", "cancel all my alarms",
        "snooze for {count} minutes", "what alarms do i have {when}", "change my {time} alarm to {time}",
    ]),
    "timer": (1.5, [
        "set a timer for {duration}", "set a {food} timer for {duration}", "start a {duration} timer",
        "how much time is left on my timer", "how much time is left on the {food} timer",
        "cancel the {food} timer", "add {duration} to my timer", "pause the timer",
        "set a timer for {duration} called {food}",
    ]),
    "call": (1.5, [
        "call {contact}", "call {contact} on speaker", "video call {name}", "call {name} back",
        "hang up the call", "who called me {when}", "redial the last number", "call the nearest {business}",
    ]),
    "message": (2.0, [
        "text {contact} {message}", "send a message to {contact} saying {message}", "tell {name} {message}",
        "reply to {name} {message}", "read my new messages", "read my messages from {name}",
        "email {name} about the {subject}", "send an email to {name} about the {subject}",
        "did {name} text me {when}", "text {name} that {message}",
    ]),
    "music": (2.0, [
        "play some {genre}", "play {genre} in the {room}", "play my {playlist} playlist",
        "shuffle my {playlist} playlist", "play some music from the {decade}", "play {genre} from the {decade}",
        "skip this song", "play the next song", "pause the music in the {room}", "resume the music",
        "turn the volume up", "turn the volume down", "set the volume to {percent} percent",
        "set the volume to {small}", "play a podcast about {topic}", "play the news",
        "what song is this", "add this song to my {playlist} playlist", "play something relaxing",
        "stop the music in the {room}",
    ]),
    "weather": (2.0, [
        "what's the weather in {city} {when}", "what's the weather {when}", "will it rain {when}",
        "will it rain in {city} {when}", "do i need an umbrella {when}", "how hot will it be in {city} {when}",
        "how cold is it in {city}", "what's the temperature outside", "is it going to snow {when}",
        "what's the forecast for {city} {when}", "is it windy in {city} {when}",
    ]),
    "reminder": (2.0, [
        "remind me to {task}", "remind me to {task} {when}", "remind me to {task} at {time}",
        "remind me to {task} {when} at {time}", "remind me to {task} when i get {place}",
        "add {item} to my shopping list", "add {item} and {item} to my shopping list",
        "what's on my shopping list", "what's on my calendar {when}",
        "schedule a meeting with {name} {when} at {time}", "move my {time} meeting to {time}",
        "cancel my meeting with {name}", "when is my next meeting", "add {subject} review to my calendar {when}",
    ]),
    "navigation": (1.5, [
        "navigate to {place}", "take me {place}", "how long will it take to get to {city}",
        "find a {business} near me", "directions to the nearest {business}", "how far is {city} from here",
        "what time does the {business} close", "is the {business} open {when}",
        "how is the traffic on the way to work", "find a {business} {relation} {city}",
        "where is the closest {business}",
    ]),
    "device": (1.5, [
        "open {app}", "open the {app}", "close {app}", "take a picture", "take a selfie",
        "turn on {setting}", "turn off {setting}", "set the brightness to {percent} percent",
        "turn the brightness up", "how much battery do i have left", "take a screenshot", "lock my phone",
        "show me my photos from {when}", "show me photos of {name}", "find my phone",
    ]),
    "info": (1.5, [
        "what time is it", "what time is it in {city}", "what's the date {when}", "what day is it {when}",
        "how many {unit} in a {unit}", "how many {unit} are in {count} {unit}",
        "convert {count} {unit} to {unit}", "what's {number} plus {number}", "what's {number} times {number}",
        "what's {number} minus {number}", "who won the {team} game last night",
        "when do the {team} play next", "what's the score of the {team} game", "tell me a joke",
        "how do you spell {name}", "what's the news {when}", "how long is the flight to {city}",
        "what's a good {business} {relation} {city}",
    ]),
}

MIN_WORDS, MAX_WORDS = 3, 12
_SLOT = re.compile(r"\{([a-z_]+)\}")


def _expand(template: str, rng: random.Random) -> str:
    return _SLOT.sub(lambda m: _expand(rng.choice(_SLOTS[m.group(1)]), rng), template)


def _variants(text: str) -> int:
    """How many distinct expansions ``text`` has (an upper bound: ignores coincidences)."""
    n = 1
    for slot in _SLOT.findall(text):
        n *= sum(_variants(v) for v in _SLOTS[slot])
    return n


def _template_weights(templates: list[str]) -> list[float]:
    # Drawing templates uniformly would repeat the fixed requests ("pause the
    # timer") far too often; sqrt(variants) keeps them in while letting the
    # open templates dominate.
    return [_variants(t) ** 0.5 for t in templates]


def domain_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` assistant requests drawn from the grammar, the same for the same seed.

    Sentences have :data:`MIN_WORDS` to :data:`MAX_WORDS` words, are already
    normalized (lower case, numbers spelled out) and may repeat (short fixed
    requests such as "take a selfie" do); at least 90% of 1,000 are distinct.

    Args:
      n: how many sentences (>= 0).
      seed: the random seed (any int).

    Returns:
      ``n`` sentences.

    Raises:
      ValueError: ``n`` is negative.

    Example:
      >>> len(domain_sentences(3, seed=1))
      3
    """
    if n < 0:
        raise ValueError(f"Expected n >= 0. Received: n={n}")
    # str seeds hash the same on every run; the string is part of the corpus (keep it).
    rng = random.Random(f"gq_tf.asr.text:{seed}")
    names = list(_INTENTS)
    weights = [_INTENTS[k][0] for k in names]
    template_weights = {k: _template_weights(_INTENTS[k][1]) for k in names}
    out = []
    while len(out) < n:
        intent = rng.choices(names, weights)[0]
        template = rng.choices(_INTENTS[intent][1], template_weights[intent])[0]
        sentence = _expand(template, rng)
        if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
            out.append(sentence)
    return out


def domain_vocabulary() -> list[str]:
    """Every word :func:`domain_sentences` can produce, sorted.

    Derived from the grammar's templates and slot lists (not a hand list).

    Example:
      >>> "alarm" in domain_vocabulary()
      True
    """
    words: set[str] = set()
    for text in [*(t for _, ts in _INTENTS.values() for t in ts), *(v for vs in _SLOTS.values() for v in vs)]:
        for token in text.split():
            m = _SLOT.search(token)
            if m is None:
                words.add(token)
            elif m.group(0) != token:
                # A slot glued to text ("{name}'s"): its values are single
                # words without slots (_check_grammar), so spell them all.
                words.update(token.replace(m.group(0), v) for v in _SLOTS[m.group(1)])
    return sorted(words)


def _check_grammar() -> None:
    """Raises ValueError unless the grammar is consistent.

    Every slot a template names exists, a slot glued to other text has only
    single plain words as values, and all text is already normalized.
    """
    for text in [*(t for _, ts in _INTENTS.values() for t in ts), *(v for vs in _SLOTS.values() for v in vs)]:
        for slot in _SLOT.findall(text):
            if slot not in _SLOTS:
                raise ValueError(f"Expected a slot named in _SLOTS. Received {{{slot}}} in {text!r}")
        for token in text.split():
            m = _SLOT.search(token)
            if m is not None and m.group(0) != token:
                bad = [v for v in _SLOTS[m.group(1)] if len(v.split()) != 1 or _SLOT.search(v)]
                if bad:
                    raise ValueError(f"Expected single plain words in a glued slot {token!r}. Received: {bad}")
        plain = _SLOT.sub("x", text)
        if normalize(plain) != " ".join(plain.split()):
            raise ValueError(f"Expected normalized grammar text. Received: {text!r}")
