"""Write a synthetic 100,000-prefix rate deck (SPEC §5 CSV) for the rating benchmark.

Deterministic (seeded): real country codes extended with random digits to 4–9 digit
prefixes, a realistic mix of increments (60/60, 30/6, 6/6, 1/1, 0/1), some connection fees,
~3 % of codes with a second row from 2027 (price change) and ~1 % with a promo window, plus a
catch-all. Usage: `python bench/gen_deck.py [OUT.csv] [--prefixes N] [--seed S]`.
"""

from __future__ import annotations

import argparse
import random
import sys

HEADER = (
    "code,description,valid_since,valid_until,rate_per_min,connection_fee,"
    "connection_sec,billing_block_sec"
)
_COUNTRY_CODES_TEXT = (
    "1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 "
    "62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98 211 212 213 216 218 220 221 222 223 224 "
    "225 226 227 228 229 230 231 232 233 234 235 236 237 238 239 240 241 242 243 244 245 246 "
    "248 249 250 251 252 253 254 255 256 257 258 260 261 262 263 264 265 266 267 268 269 290 "
    "291 297 298 299 350 351 352 353 354 355 356 357 358 359 370 371 372 373 374 375 376 377 "
    "378 380 381 382 383 385 386 387 389 420 421 423 500 501 502 503 504 505 506 507 508 509 "
    "590 591 592 593 594 595 596 597 598 599 670 672 673 674 675 676 677 678 679 680 681 682 "
    "683 685 686 687 688 689 690 691 692 850 852 853 855 856 880 886 960 961 962 963 964 965 "
    "966 967 968 970 971 972 973 974 975 976 977 992 993 994 995 996 998"
)
COUNTRY_CODES = tuple(_COUNTRY_CODES_TEXT.split())
INCREMENTS = ((60, 60), (30, 6), (6, 6), (1, 1), (0, 1), (0, 60))


def make_deck(prefixes: int = 100_000, seed: int = 20261122) -> str:
    """The deck as CSV text with `prefixes` distinct codes (plus extra rows for windows)."""
    rng = random.Random(seed)
    codes: set[str] = set(COUNTRY_CODES)
    while len(codes) < prefixes - 1:
        cc = rng.choice(COUNTRY_CODES)
        length = rng.randint(max(4, len(cc) + 1), 9)
        codes.add(cc + "".join(rng.choice("0123456789") for _ in range(length - len(cc))))
    lines = [HEADER, ",Rest of world,2026-01-01,,0.5000,0.0100,60,60"]
    for code in sorted(codes):
        rate = rng.randint(20, 4000)  # ten-thousandths: 0.0020 .. 0.4000 per minute
        conn, block = rng.choice(INCREMENTS)
        fee = "0.0050" if rng.random() < 0.05 else ""
        lines.append(f"{code},Destination {code},2026-01-01,,0.{rate:04d},{fee},{conn},{block}")
        roll = rng.random()
        if roll < 0.03:
            lines.append(
                f"{code},Destination {code} (2027),2027-01-01,,0.{rate + 10:04d},{fee},"
                f"{conn},{block}"
            )
        elif roll < 0.04:
            promo = max(rate - 10, 1)
            lines.append(
                f"{code},Destination {code} promo,2026-12-01,2027-01-01,0.{promo:04d},,"
                f"{conn},{block}"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line: write the deck to a file (or stdout with '-')."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="-")
    parser.add_argument("--prefixes", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20261122)
    args = parser.parse_args()
    text = make_deck(args.prefixes, args.seed)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
