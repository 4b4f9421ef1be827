# troupe: `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help run run-etcd test test-damage simulate sim-breaks bench bench-http bench-auth soak lint docs fmt clean deps docker up down mutants

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

run: ## Serve on 127.0.0.1:8080 with the embedded store in ./data
	$(CARGO) run --release

run-etcd: ## As run, with the etcd configuration layer (needs protoc)
	scripts/deps.sh bench
	$(CARGO) run --release --features etcd

deps: ## Install the system packages the tests need (Debian)
	@scripts/deps.sh test

test: ## Run the whole test suite
	@scripts/deps.sh test
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --all-features --no-fail-fast; \
	else \
		$(CARGO) test --workspace --all-features --no-fail-fast; \
	fi

test-damage: ## Flips one bit at a time at POSITIONS (5000) seeded positions of a small data directory (SEED, 0): refused, or nothing wrong served
	DAMAGE_POSITIONS=$(or $(POSITIONS),5000) DAMAGE_SEED=$(or $(SEED),0) $(CARGO) test --release --test api damage:: -- --nocapture

simulate: ## The deterministic simulator over the ledger, release build: SEEDS=N seeds (10000) from FIRST (0); prints seeds/s and what they covered
	SIM_SEEDS=$(or $(SEEDS),10000) SIM_FIRST_SEED=$(or $(FIRST),0) $(CARGO) test --release --test simulate -- --nocapture

sim-breaks: ## Breaks the runtime's core on purpose, one way at a time, and names the seed that finds each break
	scripts/sim-breaks.sh

bench: ## Criterion benches: in-process round trip, domain apply
	$(CARGO) bench --workspace

bench-http: ## Release build + wrk: troupe vs the Go + Gin peer (benches/peers), then baseline vs reads vs deposits, 1 and 2 workers
	scripts/deps.sh bench
	scripts/compare-table.sh both
	scripts/bench-http.sh

bench-auth: ## Release build + wrk: what API keys, JWTs (HS256, RS256) and TLS cost per read
	scripts/deps.sh bench
	scripts/auth-cost.sh

soak: ## Release build + 10 minutes of durable transfers: req/s, p99, RSS and data size every 30 s
	scripts/deps.sh bench
	scripts/soak.sh

mutants: ## Mutation testing of the runtime and the stores (.cargo/mutants.toml; hours; MUTANTS_ARGS='--shard 3/40')
	@scripts/deps.sh test
	@command -v cargo-mutants >/dev/null 2>&1 || $(CARGO) install --locked cargo-mutants
	$(CARGO) mutants $(MUTANTS_ARGS)

lint: ## fmt --check, clippy -D warnings, Dockerfile/compose/Prometheus/Grafana checks
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	scripts/lint-deploy.sh

docs: ## Build the book into docs/book (mdBook) and check every link of it, README, CHANGELOG and benches (lychee, offline)
	@scripts/deps.sh docs
	mdbook build docs
	lychee --offline --include-fragments --no-progress --exclude-path docs/book/404.html README.md CHANGELOG.md 'docs/src/**/*.md' 'benches/**/*.md' docs/book

fmt: ## Format the code
	$(CARGO) fmt --all

docker: ## Build the image troupe:latest (needs a Docker engine)
	docker build --build-arg TROUPE_COMMIT=$$(git rev-parse HEAD 2>/dev/null) -t troupe:latest .

up: ## Start troupe, Redis, Jaeger, Prometheus and Grafana (needs a Docker engine)
	TROUPE_COMMIT=$$(git rev-parse HEAD 2>/dev/null) docker compose up -d --build
	@echo "troupe http://localhost:8080  Jaeger http://localhost:16686  Prometheus http://localhost:9090  Grafana http://localhost:3000"

down: ## Stop the stack
	docker compose down

clean: ## Remove build output and the local data directory
	$(CARGO) clean
	rm -rf data
