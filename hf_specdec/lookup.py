"""Lookup drafts: continuations copied from the text itself (the prompt and everything generated so far).

`SuffixIndex` keeps, for every n-gram of the sequence with n <= max_n, the end positions of all its
occurrences, updated as tokens are committed (max_n dictionary appends per token). A query takes the longest
suffix of the sequence, of length n, that occurred before; the continuations after its most recent
occurrences are merged into a trie with counts (`lookup_trie`).

Acceptance estimates (what lets lookup nodes compete with the head's on one scale). With M occurrences of
the matched suffix of length n, and count(v) the occurrences whose continuation passes through trie node v:

    P(depth-1 node v accepted)      ~ a_n * count(v) / M
    P(child c accepted | parent v)  ~ g_n * count(c) / count(v)

a_n and g_n are acceptance rates calibrated on training-pool prompts held out from training
(`hf-specdec calibrate-lookup`); LOOKUP_CALIBRATION holds the measured values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Measured by `hf-specdec calibrate-lookup` (see README, "Lookup drafts"): match length n -> (a_n, g_n).
LOOKUP_CALIBRATION: dict[int, tuple[float, float]] = {
    1: (0.403, 0.660),
    2: (0.568, 0.744),
    3: (0.693, 0.791),
    4: (0.891, 0.930),
}
# The same for sampling at T = 1 (`hf-specdec calibrate-lookup --temperature 1`, README): a lookup node is accepted
# with the target's probability of drawing its token, well below the greedy rates. Used whenever generate samples.
LOOKUP_CALIBRATION_SAMPLING: dict[int, tuple[float, float]] = {
    1: (0.252, 0.497),
    2: (0.469, 0.547),
    3: (0.523, 0.562),
    4: (0.564, 0.606),
}


class SuffixIndex:
    """End positions of every n-gram (1 <= n <= max_n) of a growing token sequence."""

    def __init__(self, max_n: int = 4):
        self.max_n = max_n
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], list[int]] = {}

    def extend(self, tokens: list[int]) -> None:
        """Append tokens and index the n-grams that end at each of them."""
        for token in tokens:
            self.tokens.append(token)
            end = len(self.tokens) - 1
            for n in range(1, min(self.max_n, end + 1) + 1):
                self.ends.setdefault(tuple(self.tokens[end - n + 1 : end + 1]), []).append(end)

    def sync(self, sequence: list[int]) -> None:
        """Index what `sequence` (which extends the indexed tokens) adds."""
        self.extend(sequence[len(self.tokens) :])

    def longest_match(self, min_n: int = 1) -> tuple[int, list[int]]:
        """(n, end positions of the earlier occurrences, most recent first) for the longest suffix of length
        n >= min_n that occurred before; (0, []) when none did."""
        last = len(self.tokens) - 1
        for n in range(min(self.max_n, last), min_n - 1, -1):
            ends = self.ends.get(tuple(self.tokens[last - n + 1 :]))
            if ends and len(ends) > 1:  # the suffix itself is the newest occurrence
                return n, ends[-2::-1]
        return 0, []


@dataclass
class LookupTrie:
    """Continuations merged into a trie: node i has `tokens[i]`, parent `parents[i]` (-1: the tree's root, the
    last committed token) and acceptance estimate `estimates[i]`. Parents come before children."""

    match_length: int = 0
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    estimates: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def path_length(self, tokens: list[int]) -> int:
        """How many of `tokens` (a path down from the root) the trie holds, from the first on."""
        children = {(p, t): i for i, (p, t) in enumerate(zip(self.parents, self.tokens))}
        node, n = -1, 0
        for token in tokens:
            node = children.get((node, token))
            if node is None:
                break
            n += 1
        return n


def lookup_trie(index: SuffixIndex, depth: int, max_matches: int = 8, min_n: int = 1,
                calibration: dict[int, tuple[float, float]] | None = None) -> LookupTrie:
    """The continuations (up to `depth` tokens) after the `max_matches` most recent occurrences of the longest
    matched suffix, as a trie with the estimates of the module docstring."""
    n, ends = index.longest_match(min_n)
    trie = LookupTrie(match_length=n)
    if not n:
        return trie
    a, g = (calibration or LOOKUP_CALIBRATION)[min(n, max(LOOKUP_CALIBRATION))]
    ends = ends[:max_matches]
    children: dict[tuple[int, int], int] = {}  # (parent, token) -> node
    counts: list[int] = []
    for end in ends:
        parent = -1
        for token in index.tokens[end + 1 : end + 1 + depth]:
            node = children.get((parent, token))
            if node is None:
                node = children[(parent, token)] = len(trie.tokens)
                trie.tokens.append(token)
                trie.parents.append(parent)
                counts.append(0)
            counts[node] += 1
            parent = node
    for node, parent in enumerate(trie.parents):
        if parent < 0:
            trie.estimates.append(a * counts[node] / len(ends))
        else:
            trie.estimates.append(trie.estimates[parent] * g * counts[node] / counts[parent])
    return trie

