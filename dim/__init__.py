"""Deep InfoMax: encoders, MI critics, estimators, occlusion and coordinate tasks, and the
`dim` and `supervised` objectives (imported here so that they register)."""
from dim import objective, supervised  # noqa: F401  (register the objectives)
from dim.objective import DIM
from dim.supervised import Supervised

__all__ = ["DIM", "Supervised"]
