"""Sealing-task states, the plans' transition tables, stage labels, error levels.

This module is pure and imports nothing from the project. Names follow
damocles-worker exactly (including the historical spelling
``PersistanceSubmitted``) so one client can talk to either worker.

A plan is a transition table ``state -> ((event, next_state), ...)``. The
first pair of each row is the ordinary ("happy") path; the others are the
branches a stage may report (``ReSubmitPC``, ``PC2NeedSyntheticProof`` ...).
``Finished`` and ``Aborted`` have no row: the thread itself handles them (it
finalizes or drops the task). Any state can be *set* by an operator through
resume, which bypasses the table; see ``Plan.states`` for the names accepted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Event",
    "Level",
    "PLANS",
    "Plan",
    "State",
    "plan_named",
]


class State(enum.Enum):
    """Task states, in damocles-worker's declaration order."""

    Empty = "Empty"
    Allocated = "Allocated"
    DealsAcquired = "DealsAcquired"
    PieceAdded = "PieceAdded"
    TreeDBuilt = "TreeDBuilt"
    TicketAssigned = "TicketAssigned"
    PC1Done = "PC1Done"
    PC2Done = "PC2Done"
    SyntheticPoRepNeeded = "SyntheticPoRepNeeded"
    PCSubmitted = "PCSubmitted"
    PCLanded = "PCLanded"
    Persisted = "Persisted"
    PersistanceSubmitted = "PersistanceSubmitted"
    SeedAssigned = "SeedAssigned"
    C1Done = "C1Done"
    C2Done = "C2Done"
    ProofSubmitted = "ProofSubmitted"
    Finished = "Finished"
    Aborted = "Aborted"
    SnapEncoded = "SnapEncoded"
    SnapProved = "SnapProved"
    SealedChecked = "SealedChecked"
    SnapPieceAdded = "SnapPieceAdded"
    SnapTreeDBuilt = "SnapTreeDBuilt"
    SnapDone = "SnapDone"
    Unsealed = "Unsealed"

    def __str__(self) -> str:
        return self.value


class Event(enum.Enum):
    """What a finished stage reports; the table maps (state, event) to the next state."""

    Allocate = "Allocate"
    AcquireDeals = "AcquireDeals"
    AcquireDealsV2 = "AcquireDealsV2"
    AddPiece = "AddPiece"
    BuildTreeD = "BuildTreeD"
    AssignTicket = "AssignTicket"
    PC1 = "PC1"
    PC2 = "PC2"
    PC2NeedSyntheticProof = "PC2NeedSyntheticProof"
    SyntheticPoRep = "SyntheticPoRep"
    SubmitPC = "SubmitPC"
    CheckPC = "CheckPC"
    ReSubmitPC = "ReSubmitPC"
    Persist = "Persist"
    SubmitPersistance = "SubmitPersistance"
    AssignSeed = "AssignSeed"
    C1 = "C1"
    C2 = "C2"
    SubmitProof = "SubmitProof"
    ReSubmitProof = "ReSubmitProof"
    Finish = "Finish"
    AllocatedSnapUpSector = "AllocatedSnapUpSector"
    SnapEncode = "SnapEncode"
    SnapProve = "SnapProve"
    RePersist = "RePersist"
    AllocatedRebuildSector = "AllocatedRebuildSector"
    CheckSealed = "CheckSealed"
    SkipSnap = "SkipSnap"
    AllocatedUnsealSector = "AllocatedUnsealSector"
    UnsealDone = "UnsealDone"
    UploadPieceDone = "UploadPieceDone"

    def __str__(self) -> str:
        return self.value


class Level(enum.Enum):
    """Error levels; the value is the prefix shown in ``last_error``."""

    TEMPORARY = "temporary"  # may succeed if retried after recover_interval
    PERMANENT = "permanent"  # pause the thread; an operator must look
    ABORT = "abort"  # the task is hopeless: clean the location, start a new one
    CRITICAL = "critical"  # the worker itself is broken: pause the thread

    def __str__(self) -> str:
        return self.value


S, E = State, Event

_SEALER = {
    S.Empty: ((E.Allocate, S.Allocated),),
    S.Allocated: ((E.AcquireDeals, S.DealsAcquired), (E.AcquireDealsV2, S.DealsAcquired)),
    S.DealsAcquired: ((E.AddPiece, S.PieceAdded),),
    S.PieceAdded: ((E.BuildTreeD, S.TreeDBuilt),),
    S.TreeDBuilt: ((E.AssignTicket, S.TicketAssigned),),
    S.TicketAssigned: ((E.PC1, S.PC1Done),),
    S.PC1Done: ((E.PC2, S.PC2Done), (E.PC2NeedSyntheticProof, S.SyntheticPoRepNeeded)),
    S.SyntheticPoRepNeeded: ((E.SyntheticPoRep, S.PC2Done),),
    S.PC2Done: ((E.SubmitPC, S.PCSubmitted),),
    S.PCSubmitted: ((E.CheckPC, S.PCLanded), (E.ReSubmitPC, S.PC2Done)),
    S.PCLanded: ((E.Persist, S.Persisted),),
    S.Persisted: ((E.SubmitPersistance, S.PersistanceSubmitted),),
    S.PersistanceSubmitted: ((E.AssignSeed, S.SeedAssigned),),
    S.SeedAssigned: ((E.C1, S.C1Done),),
    S.C1Done: ((E.C2, S.C2Done),),
    S.C2Done: ((E.SubmitProof, S.ProofSubmitted),),
    S.ProofSubmitted: ((E.Finish, S.Finished), (E.ReSubmitProof, S.C2Done)),
}

_SNAPUP = {
    S.Empty: ((E.AllocatedSnapUpSector, S.Allocated),),
    S.Allocated: ((E.AddPiece, S.PieceAdded),),
    S.PieceAdded: ((E.BuildTreeD, S.TreeDBuilt),),
    S.TreeDBuilt: ((E.SnapEncode, S.SnapEncoded),),
    S.SnapEncoded: ((E.SnapProve, S.SnapProved),),
    S.SnapProved: ((E.Persist, S.Persisted),),
    S.Persisted: ((E.Finish, S.Finished), (E.RePersist, S.SnapProved)),
}

_REBUILD = {
    S.Empty: ((E.AllocatedRebuildSector, S.Allocated),),
    S.Allocated: ((E.AddPiece, S.PieceAdded),),
    S.PieceAdded: ((E.BuildTreeD, S.TreeDBuilt),),
    S.TreeDBuilt: ((E.PC1, S.PC1Done),),
    S.PC1Done: ((E.PC2, S.PC2Done), (E.PC2NeedSyntheticProof, S.SyntheticPoRepNeeded)),
    S.SyntheticPoRepNeeded: ((E.SyntheticPoRep, S.PC2Done),),
    S.PC2Done: ((E.CheckSealed, S.SealedChecked),),
    S.SealedChecked: ((E.SkipSnap, S.SnapDone), (E.AddPiece, S.SnapPieceAdded)),
    S.SnapPieceAdded: ((E.BuildTreeD, S.SnapTreeDBuilt),),
    S.SnapTreeDBuilt: ((E.SnapEncode, S.SnapEncoded),),
    S.SnapEncoded: ((E.SnapProve, S.SnapDone),),
    S.SnapDone: ((E.Persist, S.Persisted),),
    S.Persisted: ((E.SubmitPersistance, S.Finished),),
}

_UNSEAL = {
    S.Empty: ((E.AllocatedUnsealSector, S.Allocated),),
    S.Allocated: ((E.UnsealDone, S.Unsealed),),
    S.Unsealed: ((E.UploadPieceDone, S.Finished),),
}

# Stage label = the work performed *from* a state (damocles `State::stage`).
_SEALER_STAGES = {
    S.Empty: "-",
    S.Allocated: "AcquireDeals",
    S.DealsAcquired: "AddPieces",
    S.PieceAdded: "TreeD",
    S.TreeDBuilt: "AssignTicket",
    S.TicketAssigned: "PC1",
    S.PC1Done: "PC2",
    S.SyntheticPoRepNeeded: "SyntheticPoRep",
    S.PC2Done: "SubmitPreCommit",
    S.PCSubmitted: "WaitPCLanded",
    S.PCLanded: "PersistFiles",
    S.Persisted: "SubmitPersisted",
    S.PersistanceSubmitted: "WaitSeed",
    S.SeedAssigned: "C1",
    S.C1Done: "C2",
    S.C2Done: "SubmitProof",
    S.ProofSubmitted: "WaitProofLanded",
    S.Finished: "-",
    S.Aborted: "-",
}

_STAGE_OVERRIDES = {
    "sealer": {},
    "snapup": {
        S.Allocated: "AddPieces",
        S.TreeDBuilt: "SnapEncode",
        S.SnapEncoded: "SnapProve",
        S.SnapProved: "PersistFiles",
        S.Persisted: "SubmitSnapupProof",
    },
    "rebuild": {
        S.Allocated: "AddPieces",
        S.TreeDBuilt: "PC1",
        S.PC2Done: "C1",
        S.SealedChecked: "PrepareForSnapup",
        S.SnapPieceAdded: "TreeD",
        S.SnapTreeDBuilt: "SnapEncode",
        S.SnapEncoded: "SnapProve",
        S.SnapDone: "PersistFiles",
    },
    "unseal": {S.Allocated: "Unseal", S.Unsealed: "UploadPiece"},
}

# Stages that wait on the chain rather than compute: a pause interrupts them at once.
WAIT_STAGES = frozenset({"WaitPCLanded", "WaitSeed", "WaitProofLanded"})

NO_STAGE = "-"


@dataclass(frozen=True)
class Plan:
    """One plan's transition table and stage labels."""

    name: str
    table: dict[State, tuple[tuple[Event, State], ...]]
    stages: dict[State, str] = field(repr=False)

    @property
    def states(self) -> tuple[State, ...]:
        """Every state a task of this plan can be in (the valid resume targets), in order."""
        reachable = set(self.table) | {to for row in self.table.values() for _, to in row}
        reachable |= {State.Finished, State.Aborted}
        return tuple(s for s in State if s in reachable)

    def next_state(self, state: State, event: Event) -> State | None:
        """The state `event` leads to from `state`, or None if the table has no such move."""
        for candidate, to in self.table.get(state, ()):
            if candidate is event:
                return to
        return None

    def happy_event(self, state: State) -> Event | None:
        """The ordinary event out of `state` (first row entry); None for terminal states."""
        row = self.table.get(state)
        return row[0][0] if row else None

    def stage(self, state: State) -> str:
        """The label of the work done from `state` ("-" when there is none)."""
        return self.stages.get(state, NO_STAGE)

    def reachable_from(self, state: State) -> frozenset[State]:
        """All states reachable from `state` along the table, `state` included."""
        seen = {state}
        todo = [state]
        while todo:
            for _, to in self.table.get(todo.pop(), ()):
                if to not in seen:
                    seen.add(to)
                    todo.append(to)
        return frozenset(seen)


def _make_plan(name: str, table: dict) -> Plan:
    stages = {s: _SEALER_STAGES.get(s, NO_STAGE) for s in State}
    stages.update(_STAGE_OVERRIDES[name])
    return Plan(name=name, table=table, stages=stages)


PLANS: dict[str, Plan] = {
    "sealer": _make_plan("sealer", _SEALER),
    "snapup": _make_plan("snapup", _SNAPUP),
    "rebuild": _make_plan("rebuild", _REBUILD),
    "unseal": _make_plan("unseal", _UNSEAL),
}


def plan_named(name: str) -> Plan:
    """The plan called `name`; KeyError names the valid plans."""
    try:
        return PLANS[name]
    except KeyError:
        raise KeyError(f"unknown plan {name!r}; valid plans: {', '.join(PLANS)}") from None


def sector_id(miner: int, number: int) -> str:
    """The sector's name as damocles prints it, e.g. ``s-t010000-2``."""
    return f"s-t0{miner}-{number}"
