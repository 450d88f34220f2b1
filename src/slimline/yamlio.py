"""The one way slimline reads YAML: safe tags only, no aliases, bounded size.

YAML aliases (``*name``) let a 1 KB file describe a billion-node document ("billion laughs"):
anything that walks the result — validation, line numbers, hashing — then runs out of memory or
time. A recipe never needs them, so an alias is refused while the document is composed, before
anything walks it. Safe loading means no Python object is ever built from a tag.
"""

from __future__ import annotations

from typing import Any

import yaml

from slimline.errors import ConfigError

MAX_BYTES = 1 << 20  # a recipe is a page of text; 1 MiB is far beyond any real one


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasError(event.anchor, event.start_mark)
        return super().compose_node(parent, index)


class _AliasError(Exception):
    def __init__(self, anchor: str, mark: Any) -> None:
        super().__init__(anchor)
        self.anchor, self.mark = anchor, mark


def load_yaml(text: str, source: str = "<yaml>") -> tuple[Any, yaml.Node | None]:
    """Parse ``text`` once; returns ``(data, node)`` (the composed tree, for line numbers).

    Raises ``ConfigError`` naming ``source`` and the line for invalid YAML, an alias or merge key
    (``*a``, ``<<: *a``), a document over ``MAX_BYTES`` or nested too deep to walk."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ConfigError(
            f"{source} is {len(text):,} characters; slimline reads YAML files up to {MAX_BYTES:,} bytes",
            "a recipe is a short file: start from a template (`slimline recipe show default`)",
        )
    loader = _NoAliasLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _AliasError as e:
        raise ConfigError(
            f"{source}:{e.mark.line + 1}: YAML alias *{e.anchor} refused (aliases can expand a "
            "small file into a huge document)",
            f"write the value out in full instead of referring to &{e.anchor}",
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(
            f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})", "fix the YAML syntax"
        ) from e
    except RecursionError as e:
        raise ConfigError(
            f"{source}: the YAML is nested too deeply to read", "flatten the document"
        ) from e
    finally:
        loader.dispose()
    return data, node
