"""The classifier head of the official DIM code's probe, shared by the `supervised`
objective and the MLP / semi-supervised probes in eval."""
from __future__ import annotations

from torch import Tensor, nn


class MLPHead(nn.Module):
    """Linear hidden, BN, dropout, ReLU, Linear to classes (official probe: 200 units,
    dropout 0.1); hidden = 0 gives a linear head."""

    def __init__(self, n_in: int, n_out: int, hidden: int = 200, dropout: float = 0.1):
        super().__init__()
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.Dropout(dropout),
                                     nn.ReLU(), nn.Linear(hidden, n_out))
        else:
            self.net = nn.Linear(n_in, n_out)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h.flatten(1))
