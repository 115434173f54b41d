"""Seeds derived from a base seed, one named stream each, so that no two random streams
of a run share a seed by accident and a reader finds every derivation here."""
from __future__ import annotations

# stream -> (multiplier, offset): seed * multiplier + offset + index. The values are part
# of every run's results (they decide which batches and noise a seed gives): do not change them.
STREAMS = {
    "data_order": (1_000_003, 0),  # index = epoch: the shared permutation of the training set
    "process_noise": (7919, 1),  # index = rank: each process's z, prior samples, masks, ...
    "shapes_split": (2, 0),  # index = 0 train, 1 test: the procedural shapes of a split (data.split_seed)
    "loader_workers": (104_729, 3),  # the DataLoader workers' base seed (items are seeded on their own)
    "nat": (15_485_863, 5),  # index = 0 NAT's targets, 1 its initial assignment (dim.baselines.nat)
}


def derive_seed(seed: int, stream: str, index: int = 0) -> int:
    """The seed of `stream` (a key of STREAMS) for base `seed` and `index`."""
    multiplier, offset = STREAMS[stream]
    return seed * multiplier + offset + index
