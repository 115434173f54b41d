"""Deep InfoMax: encoders, MI critics, estimators, occlusion and coordinate tasks, and the
`dim` and `supervised` objectives and the comparison models (importing the package
registers them all)."""
from dim import baselines
from dim.objective import DIM
from dim.supervised import Supervised

__all__ = ["DIM", "Supervised", "baselines"]
