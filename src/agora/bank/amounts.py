"""Amounts as people write them ("12.50") and as the ledger keeps them (1250 minor
units), converted exactly: string arithmetic on digits, never a float, and never a
Decimal either, whose context would round a 29-digit amount. The web pages, the client
and the command line all convert through here."""

from __future__ import annotations

import re

_AMOUNT = re.compile(r"(\d+)(?:\.(\d*))?|\.(\d+)")


def parse_amount(text: str, exponent: int) -> int:
    """Decimal text in a currency's units to minor units: ("12.5", 2) -> 1250.

    Raises ValueError for anything but digits with at most ``exponent`` decimals
    (trailing zeros aside): "1.005" EUR is not a number of cents, and is refused rather
    than rounded.
    """
    text = text.strip().replace("_", "") if isinstance(text, str) else ""
    match = _AMOUNT.fullmatch(text)
    if not match:
        raise ValueError(f"not an amount: {text[:40]!r} (digits, with an optional decimal point)")
    whole, fraction = (match.group(1) or "0"), (match.group(2) or match.group(3) or "").rstrip("0")
    if len(fraction) > exponent:
        allowed = f"at most {exponent} decimal{'s' if exponent != 1 else ''}" if exponent else "no decimals"
        raise ValueError(f"{text}: the currency takes {allowed}")
    return int(whole + fraction.ljust(exponent, "0")) if exponent > 0 else int(whole)


def format_amount(minor: int, exponent: int) -> str:
    """Minor units as decimal text with the currency's exponent: (-1250, 2) -> "-12.50"."""
    sign, digits = ("-" if minor < 0 else ""), str(abs(int(minor)))
    if exponent <= 0:
        return sign + digits
    digits = digits.rjust(exponent + 1, "0")
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"
