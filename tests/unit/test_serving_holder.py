"""Router sources and the holder that swaps routers (mixllm.serving.holder), and the chat flattening the engine
routes on (mixllm.serving.schemas)."""

from __future__ import annotations

import pytest

from mixllm.exceptions import RegistryError
from mixllm.serving.holder import RouterHolder, RouterSource
from mixllm.serving.schemas import conversation_text

pytestmark = pytest.mark.unit


class VersionedSource(RouterSource):
    """Serves routers named after a version the test sets; `down` makes it fail like an unreachable registry."""

    description = "test"

    def __init__(self) -> None:
        self.version: str | None = "1"
        self.down = False
        self.loads = 0

    def current_ref(self) -> str | None:
        if self.down:
            raise RegistryError("registry unreachable")
        return self.version

    def load(self, ref: str) -> object:
        self.loads += 1
        return type("Loaded", (), {"version": f"router-{ref}"})()


def test_holder_swaps_on_alias_change_and_keeps_serving_when_the_source_is_down() -> None:
    src = VersionedSource()
    swaps: list[str | None] = []
    h = RouterHolder(src, on_swap=lambda r, ref: swaps.append(ref))
    assert h.refresh() and h.status()["router_version"] == "router-1"
    assert not h.refresh() and src.loads == 1  # unchanged alias: no reload
    src.version = "2"
    in_flight = h.router
    assert h.refresh() and h.router.version == "router-2" and in_flight.version == "router-1"
    src.down = True
    assert not h.refresh()
    st = h.status()
    assert st["ready"] and st["router_version"] == "router-2" and not st["source_reachable"]
    assert "unreachable" in st["last_error"]
    src.down, src.version = False, None  # alias removed: keep serving, report it
    assert not h.refresh() and h.router.version == "router-2" and not h.status()["source_reachable"]
    assert swaps == ["1", "2"]


def test_conversation_text_keeps_every_turn_in_order() -> None:
    text = conversation_text([{"role": "user", "content": "Sort a list in Python"},
                              {"role": "assistant", "content": "Use sorted()."},
                              {"role": "user", "content": [{"type": "text", "text": "And in Rust?"}]}])
    assert text.splitlines() == ["user: Sort a list in Python", "assistant: Use sorted().", "user: And in Rust?"]


def test_a_conversation_without_text_is_routed_on_its_roles() -> None:
    """Tool-call turns (content null) and image-only parts are valid OpenAI chats: never a blank prompt."""
    text = conversation_text([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                              {"role": "assistant", "content": None}])
    assert text.splitlines() == ["user:", "assistant:"] and text.strip()
    assert conversation_text([{"role": "user", "content": "hi"}, {"role": "tool"}]) == "user: hi"
