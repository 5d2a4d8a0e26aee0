# Pushgate: the two commands a newcomer needs.
#   make dev   - run the whole pipeline locally (moto, functions, poller, webhook receiver)
#   make test  - the full suite: fmt, clippy, cfn-lint, unit and integration tests
# Everything else they need is installed here, pinned, into .pushgate/venv.

VENV     := .pushgate/venv
PYTHON   ?= python3
export PUSHGATE_MOTO_SERVER := $(CURDIR)/$(VENV)/bin/moto_server
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: dev test venv lint unit smoke bench bench-lambda clean

venv: $(VENV)/.installed

$(VENV)/.installed: infra/requirements.txt infra/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/requirements.txt -c infra/constraints.txt
	touch $@

# The functions are built one by one, as `cargo lambda watch` builds them, so its first
# request reuses this build.
dev: venv
	cargo build --quiet --bin ingest
	cargo build --quiet --bin dispatcher
	cargo build --quiet --bin callback
	cargo run --quiet -p pushgate -- dev

lint: venv
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	$(VENV)/bin/cfn-lint template.yaml
	AWS_DEFAULT_REGION=us-east-1 SAM_CLI_TELEMETRY=0 $(VENV)/bin/sam validate --lint -t template.yaml

unit: venv
	bash tests/unit.sh

smoke: venv
	bash tests/smoke.sh

# cargo test runs last so its summary closes the output.
test: lint smoke unit

bench: venv
	cargo bench -p pushgate-tests

# The release binaries run as Lambda runs them (Runtime API stand-in, moto behind a
# call-counting proxy): init, CPU, latency, memory and AWS calls per message.
# `make bench-lambda MESSAGES=400` for more messages.
MESSAGES ?= 200
bench-lambda: venv
	cargo build --quiet --release --bin ingest
	cargo build --quiet --release --bin dispatcher
	cargo build --quiet --release --bin callback
	cargo run --quiet -p pushgate -- bench-lambda --messages $(MESSAGES)

clean:
	rm -rf .pushgate
