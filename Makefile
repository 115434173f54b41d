# Both targets create and fill .venv on first use (scripts/bootstrap.sh).
.PHONY: demo test
demo:
	bash scripts/bootstrap.sh python train.py --config ie_digits
# Two workers (the test nets run one thread each); a file's tests share a worker, so module
# fixtures (a trained run shared by several tests) are built once.
test:
	bash scripts/bootstrap.sh python -m pytest -q -n 2 --dist loadfile tests
