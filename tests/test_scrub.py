"""Known secrets are scrubbed in every spelling they reach a body, a record or a stream in."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import orjson
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from gateway.keylike import KEY_LIKE, keep_label
from gateway.scrub import REDACTED, Scrubber

SECRETS = {
    "quote": 'pa"ss-w0rdQuote1',
    "backslash": "back\\slash-Key99",
    "slash": "sl/ash/Key-2024xyz",
    "plus": "plus+key+Value42",
    "equals": "eq=uals==Key77ab",
    "space": "with space Key55a",
    "alnum": "PlainAlnumKey1234567",
}
# Stands in for the secret to build what a spelling should read once scrubbed: no encoder changes it.
PLACEHOLDER = "QQQQ"


def _each_non_alnum(hex_format: str) -> Callable[[str], str]:
    return lambda s: "".join(
        c if c.isascii() and c.isalnum() else "\\u" + format(ord(c), hex_format) for c in s
    )


def _lower_percent(s: str) -> str:
    return re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(s, safe=""))


SPELLINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "json": lambda s: json.dumps(s, ensure_ascii=False),
    "json_ascii": lambda s: json.dumps(s, ensure_ascii=True),
    "json_slash": lambda s: json.dumps(s).replace("/", "\\/"),
    "unicode_upper": _each_non_alnum("04X"),
    "unicode_lower": _each_non_alnum("04x"),
    "url": lambda s: quote(s, safe=""),
    "url_plus": quote_plus,
    "url_lower": _lower_percent,
    "double_json": lambda s: json.dumps(json.dumps({"m": s})),
    "double_json_slash": lambda s: json.dumps(json.dumps({"m": s}).replace("/", "\\/")),
}


def in_text(spelled: str) -> str:
    return f"upstream said: invalid credential {spelled} (see the docs)"


def scrubbed_everywhere(scrub: Scrubber, text: str) -> list[str]:
    """What each method makes of `text`, as text."""
    data = text.encode()
    return [
        scrub.text(text),
        scrub.raw(data).decode(),
        scrub.line(data).decode(),
        scrub.stream(data).decode(),
    ]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("kind", SECRETS)
def test_each_spelling_of_each_secret_is_replaced_whole(kind: str, spelling: str) -> None:
    secret, spell = SECRETS[kind], SPELLINGS[spelling]
    text = in_text(spell(secret))
    expected = in_text(spell(PLACEHOLDER)).replace(PLACEHOLDER, REDACTED)
    assert secret not in expected
    assert scrubbed_everywhere(Scrubber(SECRETS.values()), text) == [expected] * 4


def test_a_mix_of_spellings_in_one_occurrence_is_replaced() -> None:
    scrub = Scrubber(['a/b"c d\\e-Anchor99'])
    text = 'x a\\/b%22c+d\\u005Ce\\u002danchor Anchor99 a%2fb\\\\\\"c\\u0020d\\\\\\\\e-Anchor99 y'
    assert scrub.text(text) == f"x a\\/b%22c+d\\u005Ce\\u002danchor Anchor99 {REDACTED} y"
    assert scrub.text("x a\\/b%22c+d\\u005Ce\\u002dAnchor99 y") == f"x {REDACTED} y"


@pytest.mark.parametrize("spelling", [s for s in SPELLINGS if not s.startswith("double")])
@pytest.mark.parametrize("kind", SECRETS)
def test_a_record_holding_any_spelling_stays_valid_json(kind: str, spelling: str) -> None:
    secret, spell = SECRETS[kind], SPELLINGS[spelling]
    line = orjson.dumps({"error": in_text(spell(secret)), "n": 1})
    expected = in_text(spell(PLACEHOLDER)).replace(PLACEHOLDER, REDACTED)
    assert orjson.loads(Scrubber([secret]).line(line)) == {"error": expected, "n": 1}


def test_text_without_secrets_comes_back_unchanged() -> None:
    scrub = Scrubber(SECRETS.values())
    text = 'data: {"choices":[{"delta":{"content":"Plain \\"quoted\\" text, a/b + c=d \\\\ %20"}}]}\n\n'
    event = text.encode()
    assert scrub.stream(event) is event
    assert scrub.raw(event) == event and scrub.line(event) == event and scrub.text(text) == text


def test_an_anchor_without_its_secret_leaves_the_text_unchanged() -> None:
    scrub = Scrubber(['pa"ss-w0rdQuote1', "sl/ash/Key-2024xyz"])
    text = "w0rdQuote1 alone, pa-ss-w0rdQuote1, sl/ash-Key-2024xyz, sl%2Fash%2Fkey-2024xyz"
    event = text.encode()
    assert scrub.stream(event) is event
    assert scrubbed_everywhere(scrub, text) == [text] * 4


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_secret_is_found_behind_any_number_of_its_anchor_words(spelling: str) -> None:
    # A key may hold a word (`upstream`) that text is full of: each is looked at in vain, then comes the key.
    secret, words = "sk-bench-upstream", "the bench upstream said: "
    scrub = Scrubber([secret])
    for count in range(6):
        text = words * count + SPELLINGS[spelling](secret) + " upstream, " + SPELLINGS[spelling](secret)
        expected = text.replace(SPELLINGS[spelling](secret), SPELLINGS[spelling](PLACEHOLDER))
        assert scrubbed_everywhere(scrub, text) == [expected.replace(PLACEHOLDER, REDACTED)] * 4
    clean = (words * 8).encode()
    assert scrub.stream(clean) is clean


def test_a_secret_without_an_anchor_is_still_found_in_every_spelling() -> None:
    secret = "a-b/c d+e"
    scrub = Scrubber([secret])
    for spell in SPELLINGS.values():
        text = in_text(spell(secret))
        expected = in_text(spell(PLACEHOLDER)).replace(PLACEHOLDER, REDACTED)
        assert scrubbed_everywhere(scrub, text) == [expected] * 4
    clean = b"a-b/c-d+e and a b c d e"
    assert scrub.stream(clean) is clean


def test_short_secrets_are_ignored() -> None:
    scrub = Scrubber(["abc", "x/y"])
    assert scrub.secrets == ()
    assert scrub.text("abc x/y") == "abc x/y"


def test_quotes_at_the_ends_of_a_secret_never_break_the_json_around_it() -> None:
    # The bare quote of a value that is the secret's inner part is the JSON's own: left in place.
    scrub = Scrubber(['"quoted-Secret-42"', "trailing-Slash-77\\"])
    line = orjson.dumps({"a": "quoted-Secret-42", "b": 'say "quoted-Secret-42"', "c": "trailing-Slash-77\\"})
    assert orjson.loads(scrub.line(line)) == {"a": REDACTED, "b": f"say {REDACTED}", "c": REDACTED}


def test_a_match_starting_inside_an_escape_takes_the_escape_with_it() -> None:
    # `\n` then "newline-Key-5": "nnewline-Key-5" is not there, but redacting more keeps the JSON valid.
    scrub = Scrubber(["nnewline-Key-5", "u0041bc-Hex-Key-6"])
    line = orjson.dumps({"a": "x\nnewline-Key-5", "b": "\\nnewline-Key-5", "c": "A\u0041bc-Hex-Key-6"})
    line = line.replace(b"AAbc", b"A\\u0041bc")
    assert orjson.loads(scrub.line(line)) == {"a": f"x{REDACTED}", "b": f"\\{REDACTED}", "c": f"A{REDACTED}"}


def test_key_like_strings_are_still_caught_by_line_and_text() -> None:
    scrub = Scrubber(["provider-secret-value"])
    line = orjson.dumps({"a": "Bearer abcdefghijklmnop1234", "b": "provider-secret-value"})
    assert orjson.loads(scrub.line(line)) == {"a": f"Bearer {REDACTED}", "b": REDACTED}
    assert scrub.text("Bearer abcdefghijklmnop1234") == f"Bearer {REDACTED}"
    assert scrub.raw(b"Bearer abcdefghijklmnop1234") == b"Bearer abcdefghijklmnop1234"


CREDENTIAL_VALUES = ['ab"cdefgh', 'ab\\cd"ef\\', "plain-value-1", 'x\ny"z', '""""x']


@pytest.mark.parametrize("value", CREDENTIAL_VALUES)
@pytest.mark.parametrize("depth", [0, 1], ids=["plain", "in-a-string"])
def test_a_value_under_a_credential_key_is_hidden_whole_whatever_it_escapes(value: str, depth: int) -> None:
    """Quotes and backslashes inside the value (escaped once, or again inside a string) end nothing early."""
    doc: object = {"password": value, "next": "kept"}
    for _ in range(depth):
        doc = {"args": orjson.dumps(doc).decode(), "next": "kept"}
    text = orjson.dumps(doc).decode()
    scrub = Scrubber([])
    for out in (scrub.text(text), scrub.line(text.encode()).decode()):
        for _ in range(depth):
            out = orjson.loads(out)["args"]
        assert orjson.loads(out) == {"password": REDACTED, "next": "kept"}


# Text that only looks like a credential key in a string, cut off by the string's end after backslashes.
CUT_OFF = ['api_key": "Bearer \\', 'api_key": "abcd\\', '"token": "abcdef\\\\', 'password": "x\\"yz\\']


@pytest.mark.parametrize("content", CUT_OFF)
def test_a_credential_value_cut_off_by_the_end_of_its_string_leaves_valid_json(content: str) -> None:
    """The value under a key found inside a string never runs past the quote that closes that string."""
    line = orjson.dumps({"content": content, "next": "kept"})
    scrub = Scrubber([])
    for out in (scrub.line(line), scrub.text(line.decode()).encode()):
        record = orjson.loads(out)  # the line stays JSON: its next field is still there
        assert record["next"] == "kept"
        assert REDACTED in record["content"]


PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
ALNUM = string.ascii_letters + string.digits
SECRET = st.builds(
    lambda head, run, tail: head + run + tail,
    st.text(PRINTABLE, max_size=18),
    st.text(ALNUM, min_size=4, max_size=10),
    st.text(PRINTABLE, max_size=18),
).filter(lambda s: 8 <= len(s) <= 40)
AROUND = st.text(PRINTABLE, max_size=30)
SPELLING = st.sampled_from(list(SPELLINGS))


def _anchor(secret: str) -> str:
    return max(re.findall("[A-Za-z0-9]+", secret), key=len)


@settings(max_examples=150, deadline=None)
@given(SECRET, AROUND, AROUND, SPELLING)
def test_random_secrets_go_in_any_spelling(secret: str, before: str, after: str, spelling: str) -> None:
    spelled = SPELLINGS[spelling](secret)
    text = before + spelled + after
    anchor = _anchor(secret)
    for out in scrubbed_everywhere(Scrubber([secret]), text):
        assert spelled not in out
        # Nothing of the occurrence survives: its anchor is left only where the surrounding text had it.
        kept = out.replace(REDACTED, "\0").count(anchor)
        assert kept <= (before + "\0" + after).count(anchor)


@settings(max_examples=100, deadline=None)
@given(SECRET, AROUND, AROUND, SPELLING)
def test_a_scrubbed_record_is_always_valid_json(secret: str, before: str, after: str, spelling: str) -> None:
    assume(secret not in before + after)
    line = orjson.dumps({"error": before + SPELLINGS[spelling](secret) + after, "raw": [secret]})
    scrub = Scrubber([secret])
    for out in (scrub.line(line), scrub.raw(line)):
        record = orjson.loads(out)  # raises if scrubbing broke the JSON
        assert secret not in record["raw"][0] and secret not in record["error"]


# Pieces of key-like strings and of what only looks like them, in both cases, with look-alike letters.
KEYISH = st.sampled_from(
    [
        *(
            "Bearer ",
            "bearer\t",
            "sk-",
            "SK-",
            "pk-",
            "rk-",
            "or-",
            "olp-",
            "AKIA",
            "akia",
            "api_key",
            "APIKEY",
        ),
        *("s3_key", "secret", "Secret", "passwd", "token", "key_id", "KEY_ID ", '"', '\\"', '": "', "'", " "),
        *("abcdefghijklmnop", "0123456789ABCDEF", "x" * 4, "59.678s", "9999", "\u212a", "\u017f", "é"),
        *("s", "k", "-", "_", "a", "p", "i", "e", "y", "t", "o", "n"),
    ]
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(KEYISH, max_size=10).map("".join))
@example("\u017fk-abcdefghijklmnop1234")  # the long s: no `s` once lowered, yet the regex matches it as one
@example("s\u212a-abcdefghijklmnop1234")  # the Kelvin sign, lowered to `k`
def test_text_replaces_exactly_what_the_key_regex_replaces(text: str) -> None:
    """Looking for the triggers first changes nothing the regex would find: text that is not ASCII, where
    case-insensitive matching pairs letters that lowering does not, goes to the regex at once."""
    assert Scrubber([]).text(text) == KEY_LIKE.sub(keep_label(str), text)
