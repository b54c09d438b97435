"""The stages, in data order: cost, redaction, policy (with budgets); `assembly` builds them from the config."""
