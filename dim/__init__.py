"""Deep InfoMax: encoders, MI critics, estimators, occlusion and coordinate tasks."""
