"""Deep InfoMax: encoders, MI critics, estimators, occlusion and coordinate tasks, and the
`dim` and `supervised` objectives (importing the package registers them)."""
from dim.objective import DIM
from dim.supervised import Supervised

__all__ = ["DIM", "Supervised"]
