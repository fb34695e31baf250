"""A virtual-time network for two (or more) sans-I/O ICE agents: addresses owned by (agent, via), a
fixed one-way delay, and drop rules. Nothing here is the code under test."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from simulator.core.ice import Event, IceAgent
from simulator.wire.stun import Address


@dataclass
class Net:
    delay: float = 0.005
    now: float = 0.0
    owners: dict[Address, tuple[IceAgent, str]] = field(default_factory=dict)
    # what the receiver sees as the source when `via` of an agent sends (default: the via's own address)
    sources: dict[tuple[int, str], Address] = field(default_factory=dict)
    drop: Callable[[Address, Address], bool] = lambda src, dst: False
    queue: list[tuple[float, int, bytes, Address, Address]] = field(default_factory=list)
    events: dict[int, list[tuple[float, Event]]] = field(default_factory=dict)
    sent: list[tuple[float, Address, Address, bytes]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def host(self, agent: IceAgent, via: str, address: Address) -> None:
        self.owners[address] = (agent, via)
        self.sources[(id(agent), via)] = address
        self.events.setdefault(id(agent), [])

    def flush(self, agent: IceAgent) -> None:
        for data, dst, via in agent.datagrams_to_send(self.now):
            src = self.sources[(id(agent), via)]
            self.sent.append((self.now, src, Address(*dst), data))
            if not self.drop(src, Address(*dst)):
                heapq.heappush(self.queue, (self.now + self.delay, next(self._seq), data, src, Address(*dst)))
        while (event := agent.next_event()) is not None:
            self.events[id(agent)].append((self.now, event))

    def agents(self) -> list[IceAgent]:
        seen: dict[int, IceAgent] = {}
        for agent, _ in self.owners.values():
            seen[id(agent)] = agent
        return list(seen.values())

    def run(self, until: float, stop: Callable[[], bool] = lambda: False, max_steps: int = 200_000) -> None:
        agents = self.agents()
        for agent in agents:
            self.flush(agent)
        for _ in range(max_steps):
            if stop():
                return
            times = [t for a in agents if (t := a.get_timer()) is not None]
            if self.queue:
                times.append(self.queue[0][0])
            if not times:
                return
            when = max(self.now, min(times))
            if when > until:
                self.now = until
                return
            self.now = when
            if self.queue and self.queue[0][0] <= when:
                _, _, data, src, dst = heapq.heappop(self.queue)
                owner = self.owners.get(dst)
                if owner is not None:
                    owner[0].receive(data, src, self.now, owner[1])
                    self.flush(owner[0])
                continue
            for agent in agents:
                timer = agent.get_timer()
                if timer is not None and timer <= when:
                    agent.handle_timer(self.now)
                    self.flush(agent)
        raise AssertionError("simulation did not settle")

    def events_of(self, agent: IceAgent) -> list[tuple[float, Event]]:
        return self.events[id(agent)]
