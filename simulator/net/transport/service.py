"""One Edge pool node in the embedded lab: the named services (listeners) it runs.

A service is anything with ``start()``/``stop()`` and a ``running`` flag. Each has a name so a scenario
step (or a test) can stop one mid-run (``stop_service("cms")``) and see which rules fail. The Lab decides
which services a node runs (:mod:`simulator.lab.services`).
"""

from __future__ import annotations

from typing import Protocol


class Service(Protocol):
    """A listener or a set of listeners that can be started and stopped."""

    @property
    def running(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class EdgeNode:
    """The services of one pool node, started in order and stopped in reverse order."""

    def __init__(self, name: str, services: dict[str, Service]) -> None:
        self.name = name
        self.services = services

    async def start(self) -> None:
        for service in self.services.values():
            await service.start()

    async def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            await service.stop()

    async def stop_service(self, name: str) -> None:
        await self.services[name].stop()
