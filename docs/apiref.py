"""Write docs/client-api.md, the reference of `eagleeye.client`, from the library's docstrings and
signatures: `make docs`. tests/test_apiref.py fails when the page and the code differ."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Any

import eagleeye.client as client

# The order a reader needs them in: the clients, what they return, what they raise.
ORDER = ["Detector", "AsyncDetector", "Result", "Detection", "Box", "Timing", "Tls",
         "EagleEyeError", "InvalidImage", "AccessDenied", "Overloaded", "Unavailable", "ServiceError"]


def _annotation(a: Any) -> str:
    return a if isinstance(a, str) else inspect.formatannotation(a)


def signature(func: Any, skip_first: bool = True) -> str:
    sig = inspect.signature(func)
    parts: list[str] = []
    star_done = False
    params = list(sig.parameters.values())[1 if skip_first else 0:]
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
            text = f"*{p.name}"
        elif p.kind is p.VAR_KEYWORD:
            text = f"**{p.name}"
        else:
            text = p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        parts.append(text)
    out = f"({', '.join(parts)})"
    if sig.return_annotation is not sig.empty and sig.return_annotation not in ("None", None):
        out += f" -> {_annotation(sig.return_annotation)}"
    return out


def doc(obj: Any) -> str:
    text = inspect.getdoc(obj)
    if not text:
        raise SystemExit(f"{getattr(obj, '__qualname__', obj)}: no docstring (the reference is made from them)")
    return text


def members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined by `cls` itself, in source order."""
    return [(name, value) for name, value in vars(cls).items()
            if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, (property, classmethod)))]


def render_class(name: str, cls: type) -> list[str]:
    lines: list[str] = []
    if issubclass(cls, BaseException):
        base = cls.__bases__[0].__name__
        lines += [f"### `{name}({base})`", "", doc(cls), ""]
        return lines
    if dataclasses.is_dataclass(cls):
        lines += [f"### `{name}`", "", doc(cls), "", "| field | type | default |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = "" if f.default is dataclasses.MISSING else f"`{f.default!r}`"
            lines.append(f"| `{f.name}` | `{_annotation(f.type)}` | {default} |")
        lines.append("")
    else:
        lines += [f"### `{name}{signature(cls.__init__)}`", "", doc(cls), ""]
    for member, value in members(cls):
        if isinstance(value, property):
            lines += [f"#### `{name}.{member}` (property)", "", doc(value.fget), ""]
            continue
        func = value.__func__ if isinstance(value, classmethod) else value
        prefix = "async " if inspect.iscoroutinefunction(func) else ""
        kind = "async generator " if inspect.isasyncgenfunction(func) else ""
        lines += [f"#### `{prefix}{name}.{member}{signature(func)}`{' (' + kind.strip() + ')' if kind else ''}",
                  "", doc(func), ""]
    return lines


def main() -> int:
    missing = sorted(set(client.__all__) - set(ORDER))
    if missing:
        raise SystemExit(f"docs/apiref.py: place {missing} in ORDER")
    lines = ["# `eagleeye.client` API reference", "",
             "Generated from the library's docstrings by `make docs` (docs/apiref.py); edit the code, not this",
             "page. docs/client.md says how to use it and what each mode guarantees.", "",
             "```python", "from eagleeye.client import " + ", ".join(ORDER), "```", ""]
    sections = [("Clients", ORDER[:2]), ("Results", ORDER[2:6]), ("Settings", ORDER[6:7]), ("Errors", ORDER[7:])]
    for title, names in sections:
        lines += [f"## {title}", ""]
        for n in names:
            lines += render_class(n, getattr(client, n))
    sys.stdout.write("\n".join(lines).rstrip() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
