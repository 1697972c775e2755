# The two commands: `make run` and `make test`. Everything else is a helper.
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PORT

.PHONY: run test lint bench bench-services clean browser

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
	@echo "To sign in (/accounts/login/, the admin at /admin/), create the first account: $(PY) manage.py createsuperuser"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" exec $(VENV)/bin/honcho start -f Procfile -p $(PORT)

# The browser tests drive Debian's chromium. Where it is missing, CI (or
# LONGTASK_INSTALL_BROWSER=1) installs it, if apt-get is there and we are root;
# otherwise those tests skip, unless LONGTASK_REQUIRE_BROWSER=1 or CI=true makes them fail.
browser:
	@if [ ! -x /usr/bin/chromium ] \
		&& { [ "$${CI:-}" = "true" ] || [ "$${LONGTASK_INSTALL_BROWSER:-}" = "1" ]; } \
		&& command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = "0" ]; then \
		echo "Installing Debian's chromium for the browser tests"; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

test: $(VENV)/.dev browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy longtask
	$(PY) -m sphinx -W --keep-going -b html docs var/docs-html
	$(PY) scripts/audit.py
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run
	@echo "Embedded pass: the whole suite on SQLite, the ORM broker and the file cache"
	env -u DATABASE_URL -u REDIS_URL $(VENV)/bin/pytest
	./scripts/test-services $(PY) $(VENV)/bin/pytest

bench: $(VENV)/.dev
	$(PY) bench/fanout.py
	$(PY) bench/tasks.py
	$(PY) bench/live.py
	$(PY) bench/live.py --watchers 1000 --others 10 --other-watchers 100
	$(PY) bench/idle.py
	$(PY) bench/reads.py
	$(PY) bench/fairness.py
	$(PY) bench/web.py
	$(PY) bench/scale.py
	@if $(PY) bench/services_up.py; then $(MAKE) --no-print-directory bench-services; fi

# The benches that compare the two stacks, on PostgreSQL + Redis (scratch databases of
# their own; docs/benchmarks.md). `make bench` runs them when both answer.
bench-services: $(VENV)/.dev
	$(PY) bench/fanout.py --services
	$(PY) bench/tasks.py --services
	$(PY) bench/live.py --watchers 1000 --others 10 --other-watchers 100 --services
	$(PY) bench/reads.py --services
	$(PY) bench/scale.py --services

clean:
	rm -rf $(VENV) var
