"""Dialled-number normalisation per trunk (SPEC §5): what a deck code is matched against.

`normalise` takes whatever the signalling carried for the callee — bare digits, `+44 20
7123-4567`, `00442071234567`, a SIP/SIPS/TEL URI or its user part — and returns the digits
the prefix index is searched with. The choices, in order:

1. A `sip:`/`sips:`/`tel:` scheme is dropped, and so is everything from `@` (the host).
2. Everything from the first `;` is dropped: URI-user and tel parameters such as
   `;phone-context=…`, `;npdi`, `;rn=…` do not dial anything.
3. `%2B`-style escapes are decoded (some UAs escape the `+`).
4. The trunk's tech prefix is stripped if the remaining text starts with it. It is compared
   on the raw text, because tech prefixes often hold non-digits (`0101#`).
5. A leading `+` is dropped, then every non-digit (spaces, dashes, dots, brackets, visual
   separators of RFC 3966), then one leading `00` (international access code).
6. What follows `00` is a country code, and no E.164 country code starts with `0`: `000…`
   is malformed (a doubled access code, a stuck key, a scan) and gives an empty result
   rather than being matched as if it were a national number.

Not done, on purpose: national prefixes such as a single leading `0` or `011` are kept —
which digits a trunk sends nationally is the trunk's business, and guessing a country would
bill the wrong destination. An empty result means there is no number to rate (`no_number`).
"""

from __future__ import annotations

from urllib.parse import unquote

_SCHEMES = ("sip:", "sips:", "tel:")


def normalise(number: str, tech_prefix: str = "") -> str:
    """Digits to match a deck against, from a dialled number as the signalling carried it."""
    # Fast path: already plain digits (the common case on a clean trunk).
    if number.isdigit() and number.isascii() and not tech_prefix and not number.startswith("00"):
        return number
    text = number.strip()
    lowered = text[:5].lower()
    for scheme in _SCHEMES:
        if lowered.startswith(scheme):
            text = text[len(scheme) :]
            break
    at = text.find("@")
    if at >= 0:
        text = text[:at]
    semi = text.find(";")
    if semi >= 0:
        text = text[:semi]
    if "%" in text:
        text = unquote(text)
    text = text.strip()
    if tech_prefix and text.startswith(tech_prefix):
        text = text[len(tech_prefix) :]
    if text.startswith("+"):
        text = text[1:]
    digits = "".join(ch for ch in text if "0" <= ch <= "9")
    if digits.startswith("00"):
        digits = digits[2:]
        if digits.startswith("0"):
            return ""
    return digits
