"""The pricing catalogue: the shipped tables rebuilt from public data (`genops-sidecar pricing build`).

Two public price lists are read from files (no network): the genai-prices package's data and
LiteLLM's price map. Both are converted to our table format (entries.py), every price both have is
cross-checked (crosscheck.py), a reviewed overrides file corrects known source errors
(overrides.py), and the result is written one file per provider with a report of every
disagreement and of what could not be converted (write.py). build.py runs the steps.
"""
