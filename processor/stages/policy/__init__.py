"""The policy stage: attribution, budgets and their state stores, policy rules, GenOps AWU attributes,
product metrics."""
