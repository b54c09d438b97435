"""YAML for the sidecar's own files (config, pricing tables, policy files, redaction rules).

Aliases (`*name`, and with them `<<:` merge keys) are refused outright: none of these files
needs them, and a few hundred bytes of nested aliases stand for gigabytes once a value is
walked or printed (the "billion laughs"). Nesting is bounded too, far beyond what the schemas use,
so a deeply nested document is one clear error instead of a RecursionError.

The events are checked in a first pass with the same (C, when built) parser, before any node is
built; the document is then loaded by PyYAML's safe loader.
"""

from __future__ import annotations

import yaml

from processor.files.error_text import clip

MAX_DEPTH = 32
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


class YamlError(ValueError):
    """The text is not YAML this sidecar accepts; str() is one short line."""


def load_yaml(text: str) -> object:
    """The one document in `text` (None when empty); YamlError when it does not parse, uses an
    alias or nests deeper than MAX_DEPTH."""
    try:
        _check_events(text)
        return yaml.load(text, Loader=_LOADER)  # _LOADER is a safe loader
    except YamlError:
        raise
    except yaml.MarkedYAMLError as exc:
        raise YamlError(clip(_one_line(exc))) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        # ValueError: e.g. an integer of more digits than Python converts, an impossible date.
        raise YamlError(clip(" ".join(str(exc).split()))) from None


def _check_events(text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent):
            raise YamlError(
                f"{_where(event)}: aliases (*{clip(str(event.anchor), 60)}) are not allowed; write the value out"
            )
        if isinstance(event, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlError(f"{_where(event)}: nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, _CLOSE):
            depth -= 1


def _where(event: yaml.Event) -> str:
    mark = event.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "document"


def _one_line(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = " ".join(str(exc.problem or exc.context or "not valid YAML").split())
    return where + problem


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: object) -> bool:
        return True


def dump_yaml(data: object, **options: object) -> str:
    """yaml.safe_dump, writing a shared object out each time: load_yaml refuses aliases."""
    return yaml.dump(data, Dumper=_NoAliasDumper, **options)
