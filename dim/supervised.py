"""`supervised`: the DIM encoder trained end to end on labels (the paper's "Fully
supervised" rows of Tables 1-2), with the same `features(x)` for the probes.

The paper gives the baseline only as "a fully-supervised classifier with similar
architecture"; we use the DIM encoder (conv -> fc -> Y) with a head on one of its probe
points. Default: on Y, the non-linear probe's head (A.1 / official classifier:
Linear 200, BN, dropout 0.1, ReLU, Linear to classes), so conv, fc and Y are all trained
and comparable with the DIM probes. `head_hidden: 0` gives a linear head.

Loss: cross-entropy over classes, or binary cross-entropy per attribute for multi-label
data (CelebA). Unlabeled entries (label -1, e.g. STL-10's unlabeled split) are left out of
the loss and of the accuracy; a batch with no labels gives a zero loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from arena.objective import OBJECTIVES, Batch, DataInfo, ObjectiveOptions, Phase
from arena.registry import ConfigError
from arena.schema import Fraction, NonNegativeInt

from .heads import MLPHead
from .objective import EncoderObjective

@dataclass
class SupervisedModel:
    encoder: str = "dcgan32"  # dcgan32 (32 or 16 px) | alexnet64 (64 px)
    width: float = 1.0  # multiplies the encoder's hidden widths (not the head's)
    y_dim: int = 64
    head_input: Literal["conv", "fc", "y"] = "y"  # which probe point the classifier head reads
    head_hidden: NonNegativeInt = 200  # 0 = linear head
    head_dropout: Fraction = 0.1


@dataclass
class SupervisedOptions(ObjectiveOptions):
    name: str = "supervised"


@OBJECTIVES.register("supervised")
class Supervised(EncoderObjective):
    Model = SupervisedModel
    Options = SupervisedOptions

    def __init__(self, cfg, info: DataInfo):
        super().__init__(cfg, info)
        m = cfg.model
        if info.num_classes < 1:
            raise ConfigError(f"data.name: the supervised objective needs labels; {cfg.data.name} has none")
        enc = self.build_encoder(cfg, info)
        head = MLPHead(enc.feature_dims[m.head_input], info.num_classes, m.head_hidden, m.head_dropout)
        self.nets["encoder"] = nn.ModuleDict({"encoder": enc, "head": head})

    def phases(self) -> list[Phase]:
        return [Phase("classifier", ("encoder",))]

    def logits(self, x: Tensor) -> Tensor:
        out = self.encoder(x)
        h = out[self.cfg.model.head_input]
        return self.nets["encoder"]["head"](h.flatten(1))

    def loss(self, phase: str, batch: Batch | None, batch_size: int) -> dict[str, Tensor]:
        logits = self.logits(batch.x).float()
        y = batch.y
        labeled = y >= 0  # [B] or [B, K]
        n = labeled.sum()
        if self.info.multilabel:
            per = F.binary_cross_entropy_with_logits(logits, y.clamp(min=0).float(), reduction="none")
            correct = ((logits > 0) == (y > 0)) & labeled
        else:
            per = F.cross_entropy(logits, y.clamp(min=0), reduction="none")
            correct = (logits.argmax(1) == y) & labeled
        # Mean over labeled entries; 0 (with a graph) when the batch has none.
        loss = (per * labeled).sum() / n.clamp(min=1)
        acc = correct.sum().float() / n.clamp(min=1)
        return {"loss": loss, "accuracy": acc.detach(), "labeled": labeled.float().mean().detach()}
