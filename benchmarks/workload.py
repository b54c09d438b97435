"""Realistic OTLP trace export requests, built once and serialised before any timing starts.

A batch mixes GenAI spans (~40%: chat/completion/embedding calls across providers, token counts,
prompts carrying PII in `gen_ai.prompt.N.content` or `gen_ai.input.messages`) with the ordinary
spans a service emits alongside them (HTTP server and client, database, internal work, some with
exception events), grouped under several resources with `service.name` and `genops.team`.
Everything is drawn from a seeded generator so runs are comparable.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class Model:
    provider: str  # as instrumentations send it in gen_ai.provider.name / gen_ai.system
    name: str  # gen_ai.request.model
    response_name: str  # gen_ai.response.model (often a dated snapshot)
    input_per_million: float  # USD, approximate list prices: benchmark data only
    output_per_million: float


MODELS: tuple[Model, ...] = (
    Model("openai", "gpt-4o", "gpt-4o-2024-08-06", 2.5, 10.0),
    Model("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", 0.15, 0.6),
    Model("openai", "gpt-4.1", "gpt-4.1-2025-04-14", 2.0, 8.0),
    Model("openai", "gpt-4.1-mini", "gpt-4.1-mini-2025-04-14", 0.4, 1.6),
    Model("openai", "o3-mini", "o3-mini-2025-01-31", 1.1, 4.4),
    Model("openai", "text-embedding-3-small", "text-embedding-3-small", 0.02, 0.0),
    Model("anthropic", "claude-3-5-sonnet-20241022", "claude-3-5-sonnet-20241022", 3.0, 15.0),
    Model("anthropic", "claude-3-5-haiku-20241022", "claude-3-5-haiku-20241022", 0.8, 4.0),
    Model("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4-20250514", 3.0, 15.0),
    Model("anthropic", "claude-opus-4-20250514", "claude-opus-4-20250514", 15.0, 75.0),
    Model("gcp.gemini", "gemini-1.5-pro", "gemini-1.5-pro-002", 1.25, 5.0),
    Model("gcp.gemini", "gemini-1.5-flash", "gemini-1.5-flash-002", 0.075, 0.3),
    Model("gcp.vertex_ai", "gemini-2.0-flash", "gemini-2.0-flash-001", 0.15, 0.6),
    Model("gcp.vertex_ai", "gemini-2.5-pro", "gemini-2.5-pro", 1.25, 10.0),
    Model(
        "aws.bedrock", "anthropic.claude-3-sonnet-20240229-v1:0", "anthropic.claude-3-sonnet-20240229-v1:0", 3.0, 15.0
    ),
    Model(
        "aws.bedrock", "anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0", 0.25, 1.25
    ),
    Model("aws.bedrock", "meta.llama3-70b-instruct-v1:0", "meta.llama3-70b-instruct-v1:0", 2.65, 3.5),
    Model("aws.bedrock", "amazon.titan-text-express-v1", "amazon.titan-text-express-v1", 0.2, 0.6),
    Model("mistral_ai", "mistral-large-latest", "mistral-large-2411", 2.0, 6.0),
    Model("mistral_ai", "mistral-small-latest", "mistral-small-2409", 0.2, 0.6),
    Model("mistral_ai", "open-mistral-nemo", "open-mistral-nemo-2407", 0.15, 0.15),
    Model("cohere", "command-r-plus", "command-r-plus-08-2024", 2.5, 10.0),
    Model("deepseek", "deepseek-chat", "deepseek-chat", 0.27, 1.1),
    Model("xai", "grok-2-1212", "grok-2-1212", 2.0, 10.0),
    Model("az.ai.openai", "gpt-4o", "gpt-4o-2024-11-20", 2.5, 10.0),
    Model("groq", "llama-3.3-70b-versatile", "llama-3.3-70b-versatile", 0.59, 0.79),
)

SERVICES = (
    ("chat-api", "assistants"),
    ("support-bot", "customer-care"),
    ("search-rag", "search"),
    ("checkout", "payments"),
    ("doc-summarizer", "knowledge"),
    ("agent-runner", "platform"),
    ("recommendations", "growth"),
    ("billing-worker", "payments"),
)

_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
_DOMAINS = ("example.com", "corp.example.org", "mail.example.net")
# Luhn-valid test numbers published by card networks for testing.
_CARDS = ("4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005", "6011111111111117", "4012888888881881")
_KEY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_QUESTIONS = (
    "Summarise the attached contract and list the termination clauses.",
    "Why was my last invoice higher than usual? Explain the line items.",
    "Draft a polite reply to this customer complaint about late delivery.",
    "Translate the following product description into German and French.",
    "Classify this support ticket into billing, technical or account.",
    "Write a SQL query that returns monthly active users per region.",
    "What are the side effects listed in this leaflet? Answer briefly.",
    "Extract the order number, amount and date from this email thread.",
)
_SYSTEM = (
    "You are a helpful assistant for an e-commerce company. Answer concisely and never reveal internal data.",
    "You are a support agent. Be friendly, cite the knowledge base article ids you used.",
    "You are a retrieval-augmented assistant. Use only the provided context documents.",
)
_HTTP_ROUTES = ("/api/orders/{id}", "/api/cart", "/api/users/{id}/profile", "/healthz", "/api/search", "/api/chat")
_SQL = (
    "SELECT id, status, total FROM orders WHERE customer_id = $1 ORDER BY created_at DESC LIMIT 20",
    "UPDATE carts SET updated_at = now() WHERE id = $1",
    "SELECT embedding <-> $1 AS distance, doc_id FROM chunks ORDER BY distance LIMIT 8",
    "INSERT INTO audit_log (actor, action, payload) VALUES ($1, $2, $3)",
)


def _value(value: object) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, list):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[_value(v) for v in value]))
    return common_pb2.AnyValue(string_value=str(value))


def _attributes(values: dict[str, object]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=_value(v)) for k, v in values.items()]


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = 1_763_800_000_000_000_000

    def pii(self) -> str:
        rng = self.rng
        kind = rng.randrange(5)
        if kind == 0:
            return f"My email is {rng.choice(_NAMES)}.{rng.randrange(100)}@{rng.choice(_DOMAINS)}, please reply there."
        if kind == 1:
            return f"Charge my card {rng.choice(_CARDS)} exp 04/28 for the renewal."
        if kind == 2:
            key = "".join(rng.choice(_KEY_CHARS) for _ in range(40))
            return f"Here is our key sk-proj-{key} use it for the integration test."
        if kind == 3:
            key = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
            return f"The deploy uses AKIA{key} from the old account, is that a problem?"
        return f"Call me on +1 415 555 {rng.randrange(1000, 9999)} or write to {rng.choice(_NAMES)}@{_DOMAINS[0]}."

    def prompt(self) -> str:
        text = self.rng.choice(_QUESTIONS)
        # About a third of prompts carry PII, the rest are clean text of similar size.
        if self.rng.random() < 0.35:
            text = f"{text} {self.pii()}"
        return f"{text} Context: " + " ".join(self.rng.choice(_QUESTIONS) for _ in range(self.rng.randrange(1, 4)))

    def times(self, duration_ms: float) -> tuple[int, int]:
        self.clock += self.rng.randrange(50_000, 2_000_000)
        return self.clock, self.clock + int(duration_ms * 1_000_000)

    def span(self, name: str, kind: int, duration_ms: float, attributes: dict[str, object]) -> trace_pb2.Span:
        rng = self.rng
        start, end = self.times(duration_ms)
        return trace_pb2.Span(
            trace_id=rng.randbytes(16),
            span_id=rng.randbytes(8),
            parent_span_id=rng.randbytes(8),
            name=name,
            kind=kind,
            start_time_unix_nano=start,
            end_time_unix_nano=end,
            attributes=_attributes(attributes),
            status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_UNSET),
        )

    def genai_span(self, customer: str) -> trace_pb2.Span:
        rng = self.rng
        model = rng.choice(MODELS)
        embedding = model.name.startswith("text-embedding")
        operation = "embeddings" if embedding else "chat"
        input_tokens = rng.randrange(20, 8000)
        output_tokens = 0 if embedding else rng.randrange(5, 2000)
        attributes: dict[str, object] = {"gen_ai.operation.name": operation}
        # Instrumentations differ: newer ones send gen_ai.provider.name, older gen_ai.system.
        attributes["gen_ai.provider.name" if rng.random() < 0.6 else "gen_ai.system"] = model.provider
        attributes["gen_ai.request.model"] = model.name
        attributes["gen_ai.response.model"] = model.response_name
        attributes["gen_ai.request.temperature"] = round(rng.random(), 2)
        attributes["gen_ai.request.max_tokens"] = 4096
        attributes["gen_ai.usage.input_tokens"] = input_tokens
        attributes["gen_ai.usage.output_tokens"] = output_tokens
        if rng.random() < 0.2:
            attributes["gen_ai.usage.cache_read.input_tokens"] = input_tokens // 2
        attributes["gen_ai.response.id"] = f"resp_{rng.randbytes(12).hex()}"
        attributes["gen_ai.response.finish_reasons"] = ["stop"]
        attributes["server.address"] = f"api.{model.provider.split('.')[0]}.example"
        if rng.random() < 0.5:
            attributes["genops.customer_id"] = customer
            attributes["genops.feature"] = rng.choice(("chat", "summarise", "search", "triage"))
        if not embedding:
            if rng.random() < 0.5:
                attributes["gen_ai.prompt.0.role"] = "system"
                attributes["gen_ai.prompt.0.content"] = rng.choice(_SYSTEM)
                attributes["gen_ai.prompt.1.role"] = "user"
                attributes["gen_ai.prompt.1.content"] = self.prompt()
                # Legacy (OpenLLMetry) spans put the whole conversation in prompt.0 as often as not.
                if rng.random() < 0.5:
                    attributes["gen_ai.prompt.0.content"] = self.prompt()
                attributes["gen_ai.completion.0.role"] = "assistant"
                attributes["gen_ai.completion.0.content"] = "Sure. " + rng.choice(_QUESTIONS)
            else:
                messages = [
                    {"role": "system", "parts": [{"type": "text", "content": rng.choice(_SYSTEM)}]},
                    {"role": "user", "parts": [{"type": "text", "content": self.prompt()}]},
                ]
                attributes["gen_ai.input.messages"] = json.dumps(messages)
                attributes["gen_ai.output.messages"] = json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": "Done: " + rng.choice(_QUESTIONS)}]}]
                )
        name = f"{operation} {model.name}"
        return self.span(name, trace_pb2.Span.SPAN_KIND_CLIENT, rng.uniform(200, 9000), attributes)

    def plain_span(self, customer: str) -> trace_pb2.Span:
        rng = self.rng
        kind = rng.randrange(4)
        if kind == 0:
            route = rng.choice(_HTTP_ROUTES)
            status = rng.choice((200, 200, 200, 201, 404, 500))
            attributes = {
                "http.request.method": rng.choice(("GET", "POST")),
                "http.route": route,
                "url.path": route.replace("{id}", str(rng.randrange(10_000))),
                "url.scheme": "https",
                "http.response.status_code": status,
                "server.address": "shop.example.com",
                "client.address": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
                "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
                "enduser.id": customer,
            }
            span = self.span(f"GET {route}", trace_pb2.Span.SPAN_KIND_SERVER, rng.uniform(1, 300), attributes)
            if status == 500:
                span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
                start = span.start_time_unix_nano
                span.events.append(
                    trace_pb2.Span.Event(
                        time_unix_nano=start + 1000,
                        name="exception",
                        attributes=_attributes(
                            {
                                "exception.type": "TimeoutError",
                                "exception.message": f"upstream timed out for {customer}",
                                "exception.stacktrace": 'Traceback (most recent call last):\n  File "app.py", line 42',
                            }
                        ),
                    )
                )
            return span
        if kind == 1:
            attributes = {
                "db.system.name": "postgresql",
                "db.namespace": "shop",
                "db.operation.name": "SELECT",
                "db.query.text": rng.choice(_SQL),
                "server.address": "db.internal",
                "server.port": 5432,
            }
            return self.span("SELECT shop.orders", trace_pb2.Span.SPAN_KIND_CLIENT, rng.uniform(0.3, 40), attributes)
        if kind == 2:
            attributes = {
                "http.request.method": "POST",
                "url.full": "https://payments.internal/v1/charges",
                "http.response.status_code": 200,
                "server.address": "payments.internal",
            }
            return self.span("POST", trace_pb2.Span.SPAN_KIND_CLIENT, rng.uniform(5, 200), attributes)
        attributes = {"code.function.name": rng.choice(("render", "rank_results", "build_context")), "items": 12}
        return self.span("internal work", trace_pb2.Span.SPAN_KIND_INTERNAL, rng.uniform(0.05, 20), attributes)

    def request(self, spans: int, resources: int, genai_share: float) -> trace_pb.ExportTraceServiceRequest:
        rng = self.rng
        request = trace_pb.ExportTraceServiceRequest()
        per_resource = [spans // resources + (1 if i < spans % resources else 0) for i in range(resources)]
        for count in per_resource:
            service, team = rng.choice(SERVICES)
            resource = resource_pb2.Resource(
                attributes=_attributes(
                    {
                        "service.name": service,
                        "service.version": f"1.{rng.randrange(30)}.{rng.randrange(10)}",
                        "genops.team": team,
                        "deployment.environment.name": rng.choice(("production", "production", "staging")),
                        "k8s.namespace.name": team,
                        "k8s.pod.name": f"{service}-{rng.randbytes(4).hex()}",
                        "telemetry.sdk.language": "python",
                        "telemetry.sdk.name": "opentelemetry",
                        "telemetry.sdk.version": "1.38.0",
                    }
                )
            )
            genai_scope = trace_pb2.ScopeSpans(
                scope=common_pb2.InstrumentationScope(name="opentelemetry.instrumentation.openai_v2", version="2.1b0")
            )
            plain_scope = trace_pb2.ScopeSpans(
                scope=common_pb2.InstrumentationScope(name="opentelemetry.instrumentation.fastapi", version="0.59b0")
            )
            for _ in range(count):
                customer = f"{rng.choice(_NAMES)}@{rng.choice(_DOMAINS)}"
                if rng.random() < genai_share:
                    genai_scope.spans.append(self.genai_span(customer))
                else:
                    plain_scope.spans.append(self.plain_span(customer))
            scopes = [s for s in (genai_scope, plain_scope) if s.spans]
            request.resource_spans.append(trace_pb2.ResourceSpans(resource=resource, scope_spans=scopes))
        return request


# The first span of every request carries this trace id prefix; the 8 bytes after it are a
# request number written at send time (see UniquePayloads).
_MARK = b"genops-b"
# Shared by every UniquePayloads of the process: reading Workload.payloads twice must not replay.
_REQUEST_NUMBERS = itertools.count(1)


class UniquePayloads(Sequence[bytes]):
    """The distinct requests, each handed out with a new number patched into one trace id.

    The sidecar recognises a retried request by its bytes (budget charges are applied once): a
    benchmark that cycled the same few requests would, after the first round, measure the retry
    path, which skips charging and the spend metrics. Same length, same content otherwise.
    """

    def __init__(self, bases: tuple[bytes, ...], numbers: Iterator[int] | None = None) -> None:
        self.bases = bases
        # Processes sending to one sidecar (or sharing its budget state) need numbers of their own.
        self._numbers = _REQUEST_NUMBERS if numbers is None else numbers
        self._offsets = [base.index(_MARK) + len(_MARK) for base in bases]

    def __len__(self) -> int:
        return len(self.bases)

    def __getitem__(self, index: int) -> bytes:  # type: ignore[override]
        base, offset = self.bases[index], self._offsets[index]
        return base[:offset] + next(self._numbers).to_bytes(8, "big") + base[offset + 8 :]


@dataclass(frozen=True)
class Workload:
    bases: tuple[bytes, ...]
    spans_per_request: int

    @property
    def payloads(self) -> UniquePayloads:
        return UniquePayloads(self.bases)

    @property
    def mean_bytes(self) -> int:
        return sum(len(p) for p in self.bases) // len(self.bases)


def build_requests(
    count: int = 16, spans: int = 1000, resources: int = 4, genai_share: float = 0.4, seed: int = 7
) -> list[trace_pb.ExportTraceServiceRequest]:
    generator = _Generator(seed)
    return [generator.request(spans, resources, genai_share) for _ in range(count)]


def build_workload(
    count: int = 16, spans: int = 1000, resources: int = 4, genai_share: float = 0.4, seed: int = 7
) -> Workload:
    """`count` distinct pre-serialised requests of `spans` spans each."""
    requests = build_requests(count, spans, resources, genai_share, seed)
    for request in requests:
        request.resource_spans[0].scope_spans[0].spans[0].trace_id = _MARK + bytes(8)
    return Workload(tuple(r.SerializeToString() for r in requests), spans)


def price_table(size: int = 500, seed: int = 11) -> list[Model]:
    """The workload's real models plus synthetic ones up to `size` rows, shuffled.

    Shuffled so the real models are spread through the table, as they would be in an
    alphabetical price list, rather than all matching the first few statements.
    """
    rng = random.Random(seed)
    table: dict[str, Model] = {}
    for model in MODELS:
        table.setdefault(model.name, model)
    index = 0
    while len(table) < size:
        name = f"{rng.choice(('acme', 'nimbus', 'orca', 'quill', 'vertex-lab'))}-model-{index:03d}"
        table[name] = Model("other", name, name, round(rng.uniform(0.05, 20), 3), round(rng.uniform(0.1, 60), 3))
        index += 1
    rows = list(table.values())
    rng.shuffle(rows)
    return rows
