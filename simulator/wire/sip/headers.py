"""The ordered header list of a message (RFC 3261 §7.3): :class:`Headers`.

Names stay as they appeared, values as raw strings. Each line's lookup key (:func:`header_key`) is computed
once — by the parser, or on the first lookup — and carried by every derived copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from simulator.wire.sip.grammar import LIST_HEADERS, header_key, split_unquoted


@dataclass(frozen=True, slots=True)
class Headers:
    """Ordered, immutable header list; lookups ignore case and accept compact forms (RFC 3261 §7.3)."""

    items: tuple[tuple[str, str], ...] = ()
    # header_key() of every item, computed once (by the parser, or on the first lookup); never compared.
    _keys: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    @classmethod
    def _keyed(cls, items: tuple[tuple[str, str], ...], keys: tuple[str, ...]) -> Headers:
        headers = cls(items)
        object.__setattr__(headers, "_keys", keys)
        return headers

    @property
    def lookup_keys(self) -> tuple[str, ...]:
        """:func:`header_key` of every line's name, in order."""
        keys = self._keys
        if keys is None:
            keys = tuple([header_key(n) for n, _ in self.items])
            object.__setattr__(self, "_keys", keys)
        return keys

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return header_key(name) in self.lookup_keys

    def get(self, name: str) -> str | None:
        """First value of ``name`` (the whole line's value), ``None`` when absent."""
        key = header_key(name)
        keys = self.lookup_keys
        if key not in keys:
            return None
        return self.items[keys.index(key)][1]

    def get_all(self, name: str) -> list[str]:
        """Every line's value for ``name``, in order."""
        key = header_key(name)
        return [item[1] for k, item in zip(self.lookup_keys, self.items, strict=True) if k == key]

    def values(self, name: str) -> list[str]:
        """Every value of ``name``, comma-separated lines split for list headers (RFC 3261 §7.3.1)."""
        key = header_key(name)
        lines = self.get_all(name)
        if key not in LIST_HEADERS:
            return lines
        out: list[str] = []
        for line in lines:
            if "," not in line and '"' not in line:  # one value: what split_unquoted would give
                value = line.strip(" \t")
                if value:
                    out.append(value)
                continue
            out.extend(v.strip(" \t") for v in split_unquoted(line, ",", angle=True) if v.strip(" \t"))
        return out

    def add(self, name: str, value: str) -> Headers:
        """Copy with ``name: value`` appended."""
        return Headers._keyed((*self.items, (name, value)), (*self.lookup_keys, header_key(name)))

    def prepend(self, name: str, value: str) -> Headers:
        """Copy with ``name: value`` first (a proxy's own Via, RFC 3261 §16.6 step 8)."""
        return Headers._keyed(((name, value), *self.items), (header_key(name), *self.lookup_keys))

    def remove(self, name: str) -> Headers:
        """Copy without any ``name`` line."""
        key = header_key(name)
        keys = self.lookup_keys
        if key not in keys:
            return self
        kept = [(k, item) for k, item in zip(keys, self.items, strict=True) if k != key]
        return Headers._keyed(tuple(item for _, item in kept), tuple(k for k, _ in kept))

    def set(self, name: str, value: str) -> Headers:
        """Copy where the first ``name`` line holds ``value`` and other ``name`` lines are gone."""
        key = header_key(name)
        keys = self.lookup_keys
        if key not in keys:
            return self.add(name, value)
        out: list[tuple[str, str]] = []
        out_keys: list[str] = []
        done = False
        for k, item in zip(keys, self.items, strict=True):
            if k != key:
                out.append(item)
                out_keys.append(k)
            elif not done:
                out.append((item[0], value))
                out_keys.append(k)
                done = True
        return Headers._keyed(tuple(out), tuple(out_keys))

    def remove_first(self, name: str) -> Headers:
        """Copy without the first value of ``name`` (a proxy popping its Via or Route, RFC 3261 §16.12)."""
        key = header_key(name)
        keys = self.lookup_keys
        if key not in keys:
            return self
        index = keys.index(key)
        n, v = self.items[index]
        replacement: tuple[tuple[str, str], ...] = ()
        replacement_key: tuple[str, ...] = ()
        if key in LIST_HEADERS and "," in v:
            rest = split_unquoted(v, ",", angle=True)[1:]
            if rest:
                replacement = ((n, ",".join(rest).strip(" \t")),)
                replacement_key = (key,)
        elif key in LIST_HEADERS and '"' in v:
            split_unquoted(v, ",", angle=True)  # an unterminated quoted string still raises
        return Headers._keyed(
            (*self.items[:index], *replacement, *self.items[index + 1 :]),
            (*keys[:index], *replacement_key, *keys[index + 1 :]),
        )
