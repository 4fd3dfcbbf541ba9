"""imagegen tooling: the CLI, the local stack and offline fakes (never deployed to Lambda)."""
