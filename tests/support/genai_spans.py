"""GenAI spans as instrumented applications send them: attributed, counted in tokens, or priced by the SDK."""

from __future__ import annotations

from tests.support.clock import BASE_NS, NOON_NS
from tests.support.otlp_builders import span

# The attribution the GenOps spec requires of every GenAI span (a span without it gets a WARNING).
# (The project comes from the resource's service.name.)
ATTRIBUTED = {"genops.team": "ml", "genops.environment": "production"}

# Attribution as a Kubernetes deployment gives it: from the resource, through the default fallbacks.
RESOURCE = {"service.name": "chat-api", "k8s.namespace.name": "ml", "deployment.environment.name": "production"}

TOKENS = {"gen_ai.usage.input_tokens": 1_000_000, "gen_ai.usage.output_tokens": 0, "gen_ai.provider.name": "openai"}


def llm_span(cost: float = 0.25, start_time_unix_nano: int = BASE_NS, **attributes: object):
    """An attributed span that carries its own cost (`genops.cost.total`), as an SDK that prices its calls sends it."""
    attrs: dict[str, object] = {**ATTRIBUTED, "gen_ai.request.model": "gpt-4o-mini", "genops.cost.total": cost}
    attrs.update(attributes)
    return span(attributes=attrs, start_time_unix_nano=start_time_unix_nano)


def genai_span(operation: str | None = "chat", model: str = "gpt-4o-mini", **attributes: object):
    """A span with a million input tokens and no attribution of its own (`operation` None: no operation name)."""
    attrs: dict[str, object] = {"gen_ai.request.model": model, **TOKENS}
    if operation is not None:
        attrs["gen_ai.operation.name"] = operation
    attrs.update(attributes)
    return span(name=f"{operation} {model}", attributes=attrs)


def priced(team: str, cost: float, model: str = "gpt-4o", **extra: object):
    """A span an SDK priced itself (the cost stage leaves it alone): total and parts, at NOON_NS."""
    attributes = {
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 10,
        "genops.team": team,
        "genops.cost.total": cost,
        "genops.cost.input": cost * 0.75,
        "genops.cost.output": cost * 0.25,
        **extra,
    }
    return span(attributes=attributes, start_time_unix_nano=NOON_NS)
