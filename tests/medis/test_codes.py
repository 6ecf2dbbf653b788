"""Medis codes: every single typo is caught, people's spellings parse, issuing retries."""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable

import pytest

from afra.errors import AfraError
from afra.medis.codes import (
    ALPHABET,
    CODE_LENGTH,
    PAYLOAD_LENGTH,
    CodeIssueError,
    CodeIssuer,
    InvalidCodeError,
    format_code,
    is_valid,
    new_code,
    parse_code,
)

SAMPLE_SIZE = 300


def seeded_rng(seed: int) -> Callable[[int], int]:
    return random.Random(seed).randrange


@pytest.fixture(scope="module")
def codes() -> list[str]:
    rng = seeded_rng(20240501)
    return [new_code(rng) for _ in range(SAMPLE_SIZE)]


def test_alphabet_has_31_unambiguous_symbols() -> None:
    assert len(ALPHABET) == 31 == len(set(ALPHABET))
    assert all(math.gcd(31, k) == 1 for k in range(1, 31))  # 31 is prime
    assert not set("01OIL") & set(ALPHABET)
    assert ALPHABET.upper() == ALPHABET


def test_codes_are_12_canonical_symbols_with_50_bits_of_payload(codes: list[str]) -> None:
    assert CODE_LENGTH == 12 and PAYLOAD_LENGTH == 11
    assert PAYLOAD_LENGTH * math.log2(len(ALPHABET)) >= 50
    for code in codes:
        assert len(code) == 12
        assert set(code) <= set(ALPHABET)
        assert parse_code(code) == code
        assert is_valid(code)


def test_default_generator_is_valid() -> None:
    code = new_code()
    assert len(code) == 12 and is_valid(code)


def test_every_single_substitution_is_rejected(codes: list[str]) -> None:
    for code in codes:
        for position, original in enumerate(code):
            for symbol in ALPHABET:
                if symbol == original:
                    continue
                typo = code[:position] + symbol + code[position + 1 :]
                assert not is_valid(typo), (code, position, symbol)
    with pytest.raises(InvalidCodeError, match="the code has a typo"):
        first = codes[0]
        parse_code(first[:-1] + ALPHABET[(ALPHABET.index(first[-1]) + 1) % len(ALPHABET)])


def test_every_adjacent_transposition_is_rejected(codes: list[str]) -> None:
    swaps = 0
    for code in codes:
        for position in range(CODE_LENGTH - 1):
            a, b = code[position], code[position + 1]
            if a == b:
                continue
            swapped = code[:position] + b + a + code[position + 2 :]
            assert not is_valid(swapped), (code, position)
            swaps += 1
    assert swaps > SAMPLE_SIZE * 10  # the sample really exercised the swaps


def test_check_symbol_uses_the_whole_alphabet(codes: list[str]) -> None:
    assert {code[-1] for code in codes} == set(ALPHABET)


def test_format_groups_into_three_fours(codes: list[str]) -> None:
    for code in codes:
        grouped = format_code(code)
        assert re.fullmatch(r"[^-]{4}-[^-]{4}-[^-]{4}", grouped)
        assert grouped.replace("-", "") == code
        assert format_code(grouped) == grouped


@pytest.mark.parametrize(
    "spell",
    [
        format_code,
        lambda c: format_code(c).lower(),
        lambda c: " ".join(format_code(c).split("-")),
        lambda c: ".".join(format_code(c).split("-")),
        lambda c: "  " + " ".join(c.lower()) + "\n",
        lambda c: c[:6].lower() + " - " + c[6:],
        lambda c: format_code(c).replace("-", "\u2013"),  # phone autocorrect: en dash
    ],
    ids=["grouped", "lower", "spaces", "dots", "spaced-out", "mixed", "en-dash"],
)
def test_people_spellings_round_trip(codes: list[str], spell: Callable[[str], str]) -> None:
    for code in codes:
        assert parse_code(spell(code)) == code


def test_persian_digits_are_read_as_digits() -> None:
    code = new_code(seeded_rng(7))
    persian = code.translate(str.maketrans("23456789", "۲۳۴۵۶۷۸۹"))
    assert parse_code(persian) == code


@pytest.mark.parametrize("bad", ["0", "O", "o", "1", "I", "i", "L", "l", "\u06f0", "\u06f1"])
def test_look_alikes_are_rejected_with_a_helpful_message(bad: str) -> None:
    code = new_code(seeded_rng(11))
    text = code[:5] + bad + code[6:]
    with pytest.raises(InvalidCodeError) as caught:
        parse_code(text)
    message = str(caught.value)
    assert repr(bad)[1:-1] in message
    assert "codes never contain 0, O, 1, I or L" in message
    assert not is_valid(text)


@pytest.mark.parametrize("bad", ["ß", "\u0131", "_", "+", "K\u0301", "\x00"])
def test_foreign_characters_are_rejected_not_guessed(bad: str) -> None:
    # "ß".upper() is "SS" and dotless i upper-cases to "I": neither may sneak through folding.
    code = new_code(seeded_rng(13))
    with pytest.raises(InvalidCodeError, match="cannot contain"):
        parse_code(code[:4] + bad + code[5:])


@pytest.mark.parametrize("length", [0, 1, 11, 13, 24])
def test_wrong_lengths_name_the_length(length: int) -> None:
    text = ("23456789AB" * 3)[:length]
    with pytest.raises(InvalidCodeError, match=rf"12 characters, this one has {length}\b"):
        parse_code(text)


def test_separators_only_is_an_empty_code() -> None:
    with pytest.raises(InvalidCodeError, match="this one has 0"):
        parse_code(" - . ")


def test_errors_are_value_errors_of_the_appliance() -> None:
    with pytest.raises(ValueError):
        parse_code("nope")
    assert issubclass(InvalidCodeError, AfraError)
    with pytest.raises(InvalidCodeError):
        format_code("2222-2222-2223")


def test_payload_symbols_are_spread_over_the_alphabet() -> None:
    counts: Counter[str] = Counter()
    for _ in range(2000):
        counts.update(new_code()[:PAYLOAD_LENGTH])
    assert set(counts) == set(ALPHABET)
    expected = 2000 * PAYLOAD_LENGTH / len(ALPHABET)  # ~710, standard deviation ~26
    assert all(0.7 * expected < n < 1.3 * expected for n in counts.values()), counts


def test_codes_do_not_repeat() -> None:
    assert len({new_code() for _ in range(2000)}) == 2000


def test_injected_rng_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        new_code(lambda n: n)


def test_issuer_retries_on_collisions() -> None:
    seen: list[str] = []

    def is_taken(code: str) -> bool:
        seen.append(code)
        return len(seen) <= 2

    code = CodeIssuer(seeded_rng(3)).issue(is_taken)
    assert len(seen) == 3
    assert code == seen[-1] and is_valid(code)
    assert len(set(seen)) == 3


def test_issuer_gives_up_after_20_draws() -> None:
    calls: list[str] = []

    def always_taken(code: str) -> bool:
        calls.append(code)
        return True

    with pytest.raises(RuntimeError, match="20"):
        CodeIssuer().issue(always_taken)
    assert len(calls) == 20
    assert issubclass(CodeIssueError, AfraError)


def test_issuer_refuses_zero_attempts() -> None:
    with pytest.raises(ValueError):
        CodeIssuer(attempts=0)
