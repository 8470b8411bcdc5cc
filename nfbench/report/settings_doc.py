"""``nfbench methods --settings NAME``: every setting of a method, its default and the comment
beside it in the config dataclass (which says where the default comes from)."""

from __future__ import annotations

import dataclasses
import inspect
import re


def setting_comments(config_cls: type) -> dict[str, str]:
    """Field name -> its trailing comment (or the comment lines just above it), from the
    class and the config dataclasses it inherits from (a subclass's comment wins)."""
    comments: dict[str, str] = {}
    for cls in reversed(config_cls.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        above: list[str] = []
        for line in inspect.getsource(cls).splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# ").strip())
                continue
            match = re.match(r"(\w+)\s*:[^=]*=.*?(?:#\s*(.*))?$", stripped)
            if match:
                comments[match.group(1)] = (match.group(2) or " ".join(above)).strip()
            above = [] if stripped else above
    return comments


_GENERIC = {"device": "auto = CUDA when available, else CPU (--device cpu|cuda|cuda:N)"}


def settings_table(method: str) -> str:
    from nfbench.methods import method_class

    cls = method_class(method).Config
    comments = setting_comments(cls)
    defaults = cls()
    rows = [(f.name, repr(getattr(defaults, f.name)), comments.get(f.name, "") or _GENERIC.get(f.name, ""))
            for f in dataclasses.fields(cls)]
    width = max(len(r[0]) for r in rows)
    value_width = min(24, max(len(r[1]) for r in rows))
    lines = [f"{method} settings (default, source); change with --set KEY=VALUE"]
    lines += [f"  {name:{width}s}  {value:{value_width}s}  {comment}".rstrip()
              for name, value, comment in rows]
    return "\n".join(lines)
