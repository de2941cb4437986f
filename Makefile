# The two entry points of the README. Both install what is missing first (scripts/setup.sh).
.PHONY: setup build train test

setup:
	@./scripts/setup.sh

build: setup
	cargo build --release

# Trains the default experiment (configs/bandit.toml) and prints where the run went.
train: build
	./target/release/asymre train --config configs/bandit.toml

# The whole test suite (unit, property, CLI, fault and LM tests), in release mode to share
# train's build; every test binary runs even when an earlier one fails.
test: setup
	cargo test --release --no-fail-fast
