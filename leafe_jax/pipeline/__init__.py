"""The experiment runner: config, stage bookkeeping, one runner per stage, report."""
