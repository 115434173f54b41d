"""Evaluation: torch-fidelity metrics, sample grids and the DIM probes; CLIs as python -m eval.X."""
import dim  # noqa: F401  importing the method packages registers their objectives
import implicit_gen  # noqa: F401
