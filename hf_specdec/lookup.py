"""Lookup drafts: continuations copied from the text itself (the prompt and everything generated so far).

`SuffixIndex` keeps, for every n-gram of the sequence with n <= max_n, the end positions of all its
occurrences, updated as tokens are committed (max_n dictionary appends per token). A query takes the longest
suffix of the sequence, of length n, that occurred before; the continuations after its most recent
occurrences are merged into a trie with counts (`lookup_trie`). A match of max_n tokens is measured on
(up to MAX_EXTENT tokens, comparing backwards from each occurrence): a suffix that occurred 20 tokens long
(a copied passage, a loop) predicts its continuation far better than one that occurred 4 long, so long
matches get rates of their own and keep only the occurrences that are long too.

Acceptance estimates (what lets lookup nodes compete with the head's on one scale). With M occurrences of
the matched suffix of length n, and count(v) the occurrences whose continuation passes through trie node v:

    P(depth-1 node v accepted)      ~ a_n * count(v) / M
    P(child c accepted | parent v)  ~ g_n * count(c) / count(v)

a_n and g_n are acceptance rates calibrated on training-pool prompts held out from training
(`hf-specdec calibrate-lookup`), per bucket of n (`match_bucket`: 1, 2, 3, then 4-7, 8-15, 16 and longer);
LOOKUP_CALIBRATION holds the measured values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Measured by `hf-specdec calibrate-lookup --depth 16` (see README, "Lookup drafts"; 2026-12-02, 45 held-out pool
# prompts): match-length bucket floor n -> (a_n, g_n).
LOOKUP_CALIBRATION: dict[int, tuple[float, float]] = {
    1: (0.350, 0.670),
    2: (0.508, 0.738),
    3: (0.636, 0.771),
    4: (0.700, 0.856),
    8: (0.871, 0.889),
    16: (0.903, 0.930),
}
# The same for sampling at T = 1 (`hf-specdec calibrate-lookup --temperature 1`, README): a lookup node is accepted
# with the target's probability of drawing its token, well below the greedy rates. Used whenever generate samples.
# Buckets 1-4 only (every 4-token match keeps all its occurrences): sampled answers rarely repeat 8 tokens or more,
# too rarely to fit rates there (README).
LOOKUP_CALIBRATION_SAMPLING: dict[int, tuple[float, float]] = {
    1: (0.252, 0.497),
    2: (0.469, 0.547),
    3: (0.523, 0.562),
    4: (0.564, 0.606),
}


# The bucket floors of match lengths that have rates of their own (`match_bucket`), what calibrate-lookup fits.
MATCH_BUCKETS = (1, 2, 3, 4, 8, 16)
# A match of max_n tokens is extended backwards up to this many tokens (a cost of at most MAX_EXTENT comparisons
# per merged occurrence and cycle).
MAX_EXTENT = 32


def match_bucket(n: int, calibration: dict[int, tuple[float, float]]) -> int:
    """The calibration key of a match of n tokens: the largest key <= n (keys are bucket floors)."""
    return max((k for k in calibration if k <= n), default=min(calibration))


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

    def longest_match(self, min_n: int = 1, extend_to: int = MAX_EXTENT,
                      floors: tuple[int, ...] = ()) -> tuple[int, list[int]]:
        """(n, end positions of the earlier occurrences, most recent first) for the longest suffix of length
        n >= min_n that occurred before; (0, []) when none did.

        A match of max_n tokens is extended: n becomes the longest suffix, up to `extend_to` tokens, that ends
        at one of the occurrences (`match_extent`), and the occurrences kept are those whose own match reaches
        the largest of `floors` (the calibration's bucket floors) not above n -- all of them for a match
        shorter than every floor above max_n."""
        last = len(self.tokens) - 1
        for n in range(min(self.max_n, last), min_n - 1, -1):
            ends = self.ends.get(tuple(self.tokens[last - n + 1 :]))
            if ends and len(ends) > 1:  # the suffix itself is the newest occurrence
                ends = ends[-2::-1]
                if n < self.max_n or extend_to <= n:
                    return n, ends
                extents = [self.match_extent(end, extend_to) for end in ends]
                longest = max(extents)
                floor = max([f for f in floors if n < f <= longest], default=n)
                return longest, [end for end, extent in zip(ends, extents) if extent >= floor]
        return 0, []

    def match_extent(self, end: int, cap: int) -> int:
        """How many tokens, up to `cap`, the sequence ending at `end` shares with the sequence's own end."""
        tokens, last, n = self.tokens, len(self.tokens) - 1, 0
        while n < cap and n <= end and tokens[end - n] == tokens[last - n]:
            n += 1
        return n


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
    matched suffix, as a trie with the estimates of the module docstring (a_n, g_n: `calibration` at n's
    bucket)."""
    calibration = calibration or LOOKUP_CALIBRATION
    n, ends = index.longest_match(min_n, floors=tuple(calibration))
    trie = LookupTrie(match_length=n)
    if not n:
        return trie
    a, g = calibration[match_bucket(n, calibration)]
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

