# Both targets create and fill .venv on first use (scripts/bootstrap.sh).
.PHONY: demo test
demo:
	bash scripts/bootstrap.sh python train.py --config ie_digits
test:
	bash scripts/bootstrap.sh python -m pytest -q tests
