# The two commands: `make run` and `make test`. Everything else is a helper.
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PORT

.PHONY: run test lint bench clean

# The venv is made once with a Python >= 3.12 found on the machine and reused.
$(PY):
	@python=$$(./scripts/find-python) || exit 1; \
	echo "Creating $(VENV) with $$python"; \
	"$$python" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Installs are stamped, so a second `make` reuses what is there.
$(VENV)/.runtime: requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

run: $(VENV)/.runtime
	$(PY) manage.py migrate --noinput
	@echo "longtask demo: http://127.0.0.1:$(PORT)/  (Ctrl-C stops the web server and the workers)"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" exec $(VENV)/bin/honcho start -f Procfile -p $(PORT)

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run
	$(VENV)/bin/pytest

bench: $(VENV)/.dev
	$(PY) bench/fanout.py

clean:
	rm -rf $(VENV) var
