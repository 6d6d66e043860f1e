"""Operations tooling: CDC set-up, probes and cross-store reconciliation (used by the CLI,
the local stack and tests; never on a request's hot path)."""
