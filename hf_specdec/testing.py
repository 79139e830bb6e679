"""Test and benchmark helpers (like transformers.testing_utils): an oracle draft head."""

from __future__ import annotations

import torch

from .draft import FSPADDraftModel


class OracleHead(FSPADDraftModel):
    """A "cheating" head: at head position t its top token is reference[t + 2] (the target's own
    continuation) with probability `accuracy`, else a random token; the other candidates come from the
    (untrained) head. Used to exercise long accepted paths in tests, and to measure what the engine delivers
    at a known acceptance rate before a trained head exists.

    For a batch, `reference` holds one row per prompt (or a list of rows of different lengths, each the
    prompt without its padding plus its continuation); the head follows the rows that leave the batch through
    `keep_rows`, as the batched engine tells every drafter."""

    def set_reference(self, reference, accuracy: float = 1.0, seed: int = 0) -> "OracleHead":
        rows = list(reference) if not isinstance(reference, torch.Tensor) else list(reference.reshape(-1, reference.shape[-1]))
        self.lengths = torch.tensor([len(r) for r in rows])
        self.reference = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        self.accuracy = accuracy
        self.oracle_gen = torch.Generator().manual_seed(seed)
        self.rows = torch.arange(len(rows))
        return self

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.rows = self.rows[rows.cpu()]

    def forward(self, input_ids=None, features=None, position_ids=None, **kwargs):
        cache = kwargs.get("cache")
        if cache is None or cache.get_seq_length() == 0:  # a new call: its rows are the first references
            self.rows = torch.arange(min(input_ids.shape[0], len(self.reference)))
        out = super().forward(input_ids=input_ids, features=features, position_ids=position_ids, **kwargs)
        self._last_positions = position_ids.expand(input_ids.shape)
        return out

    def compute_logits(self, hidden_states):
        logits = super().compute_logits(hidden_states).float()
        positions = self._last_positions if hidden_states.dim() == 3 else self._last_positions[..., -1]
        rows = self.rows.view(-1, *[1] * (positions.dim() - 1)).expand(positions.shape)
        idx = torch.minimum(positions + 2, self.lengths[rows] - 1)
        want = self.reference[rows, idx]
        hit = torch.rand(want.shape, generator=self.oracle_gen) < self.accuracy
        want = torch.where(hit, want, torch.randint(0, logits.shape[-1], want.shape, generator=self.oracle_gen))
        return logits.scatter(-1, want[..., None], 1e4)


def oracle_head(target, reference: torch.Tensor, accuracy: float = 1.0, seed: int = 0) -> OracleHead:
    head = OracleHead(FSPADDraftModel.from_target(target).config).to(target.dtype).eval()
    head.attach_target(target)
    return head.set_reference(reference, accuracy, seed)
