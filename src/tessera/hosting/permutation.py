"""Link numbers to short links through a keyed pseudo-random permutation.

A balanced Feistel network over the smallest even bit width that covers ``62**length``, with BLAKE2b
keyed by the secret as round function (8 rounds), and cycle-walking to stay below ``62**length``. Every
number maps to exactly one link and back (a bijection, so no collisions are possible), while
neighbouring numbers give unrelated links: without the key, a link does not reveal its number, the
number of links made, or the next link. It is not encryption of anything secret: whoever holds the key
can turn every link back into its number.
"""

from __future__ import annotations

import hashlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUES = {char: value for value, char in enumerate(ALPHABET)}
#: Two base62 digits at a time: half the divisions when encoding.
_PAIRS = [high + low for high in ALPHABET for low in ALPHABET]
ROUNDS = 8


class LinkPermutation:
    """``link(number)`` and its inverse ``number(link)`` for ``0 <= number < 62**length``."""

    def __init__(self, key: bytes, length: int) -> None:
        if not key:
            raise ValueError("the link key is empty")
        if length < 1:
            raise ValueError(f"link length {length} is below 1")
        self.length = length
        self.capacity = 62**length
        bits = (self.capacity - 1).bit_length()
        self._half = (bits + 1) // 2
        self._mask = (1 << self._half) - 1
        self._in_bytes = (self._half + 7) // 8
        digest_size = max(8, self._in_bytes)
        # BLAKE2b takes keys up to 64 bytes; a longer secret is hashed down first.
        mac_key = key if len(key) <= 64 else hashlib.blake2b(key).digest()
        # One keyed state per round, already fed the round and the link length (so another length gives
        # an unrelated permutation); each evaluation copies it (big-endian bytes) and adds the half block.
        self._copies = [
            hashlib.blake2b(
                b"tessera-link" + bytes((index, length)), key=mac_key, digest_size=digest_size
            ).copy
            for index in range(ROUNDS)
        ]

    def _encrypt(self, value: int) -> int:
        half, mask, size = self._half, self._mask, self._in_bytes
        left, right = value >> half, value & mask
        for copy in self._copies:
            state = copy()
            state.update(right.to_bytes(size))
            left, right = right, left ^ (int.from_bytes(state.digest()) & mask)
        return (left << half) | right

    def _decrypt(self, value: int) -> int:
        half, mask, size = self._half, self._mask, self._in_bytes
        left, right = value >> half, value & mask
        for copy in reversed(self._copies):
            state = copy()
            state.update(left.to_bytes(size))
            left, right = right ^ (int.from_bytes(state.digest()) & mask), left
        return (left << half) | right

    def permute(self, number: int) -> int:
        """The permuted value of ``number``, in ``[0, capacity)`` (cycle-walking: the network permutes
        ``[0, 2**bits)``; a value past the capacity is sent through again until it falls inside, which
        keeps the map a bijection of ``[0, capacity)``)."""
        self._check(number)
        value = self._encrypt(number)
        while value >= self.capacity:
            value = self._encrypt(value)
        return value

    def unpermute(self, value: int) -> int:
        self._check(value)
        number = self._decrypt(value)
        while number >= self.capacity:
            number = self._decrypt(number)
        return number

    def link(self, number: int) -> str:
        """``length`` base62 characters (``0-9A-Za-z``)."""
        value = self.permute(number)
        pairs = []
        for _ in range(self.length // 2):
            value, pair = divmod(value, 3844)
            pairs.append(_PAIRS[pair])
        if self.length % 2:
            pairs.append(ALPHABET[value])
        return "".join(reversed(pairs))

    def number(self, link: str) -> int:
        """The number whose link this is; ``ValueError`` for anything that is not a link of this length."""
        if len(link) != self.length:
            raise ValueError(f"a link has {self.length} characters, not {len(link)}")
        value = 0
        for char in link:
            digit = _VALUES.get(char)
            if digit is None:
                raise ValueError(f"{char!r} is not a link character (0-9, A-Z, a-z)")
            value = value * 62 + digit
        return self.unpermute(value)

    def _check(self, number: int) -> None:
        if not 0 <= number < self.capacity:
            raise ValueError(f"link number {number} is outside [0, 62**{self.length})")
