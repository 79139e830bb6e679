"""Whether a cost-sized cycle runs the draft head at all (strategy="fspad", one row).

What the head is worth in a cycle is known only after it: the tokens it got accepted beyond those the lookup
drafts alone would have. `HeadGate` keeps running means of that gain g and of the head's cost c_h (its
catch-up and expansions, and the extra nodes verified) over the cycles that ran it, and skips the head only
while g / c_h falls short of SKIP_BELOW times the rate of the cycle without it (tree/sizing.py: `head_pays`
is the break-even, SKIP_BELOW = 1). On a text where the head's drafts fail (sampled translation, say) the
cycles then decode like stock, or from lookup drafts alone, instead of paying a head catch-up and a
verification of failing nodes for every token.

Why a margin below break-even, means over ~10 cycles and a warm-up of WARM_UP observed cycles: a skipped head
is not observed, so a mean that dips below the threshold by chance (at T=1 a cycle's gain is often 0 where the
head pays on average; an answer's first cycles often fail) stays there until a probe, and at T=1 the shipped
head sits near break-even on most texts. Measured on held-out prompts
(README, "Skipping a head that does not pay"): without the warm-up the gate cost 2-4% where the head roughly
pays and gained 5-8% where it fails (held-out translation at T=1: 0.90x -> 0.97x of stock); with it, 4% and
0%. So generate runs it only with head_gate=True.

The gain changes as the text does, and a skipped head is not observed: after a run of skipped cycles the head
runs once again (a probe). The run doubles while probes find that the head still does not pay (up to
MAX_SKIPPED cycles) and starts again from one when it does. Only the drafts change, never the output.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..tree import head_pays

SMOOTHING = 0.1  # weight of the newest cycle in the running means: about the last ten cycles count
WARM_UP = 8  # cycles observed before the gate may skip: the first answer tokens say little about the rest
SKIP_BELOW = 0.5  # skip the head while it earns less than this share of its cost at the no-head rate
MAX_SKIPPED = 16  # the longest run of cycles without the head between two probes


@dataclass
class HeadGate:
    gain: float | None = None  # running mean of the tokens the head added per cycle that ran it
    cost_ms: float | None = None  # running mean of what the head cost in those cycles
    skipped: int = 0  # cycles without the head since it last ran
    skip_run: int = 1  # cycles to skip before the next probe
    probed: bool = False  # the head's last run was a probe
    observed: int = 0  # cycles that ran the head

    def run_head(self, base_rate: float) -> bool:
        """Whether this cycle runs the head, where the cycle without it would emit `base_rate` tokens per ms."""
        if self.observed < WARM_UP:
            return True
        if head_pays(self.gain, SKIP_BELOW * self.cost_ms, base_rate):
            self.skip_run, self.probed = 1, False
            return True
        if self.probed:  # the probe found it still does not pay: wait longer for the next
            self.skip_run, self.probed = min(2 * self.skip_run, MAX_SKIPPED), False
        if self.skipped >= self.skip_run:
            self.probed = True
            return True
        self.skipped += 1
        return False

    def observe(self, gain: float, cost_ms: float) -> None:
        """A cycle that ran the head: the tokens it added beyond the lookup-only tree's, and its cost in ms."""
        self.observed += 1
        weight = max(1 / self.observed, SMOOTHING)  # a plain mean until it holds ~10 cycles
        self.gain = gain if self.gain is None else self.gain + weight * (gain - self.gain)
        self.cost_ms = cost_ms if self.cost_ms is None else self.cost_ms + weight * (cost_ms - self.cost_ms)
        self.skipped = 0
