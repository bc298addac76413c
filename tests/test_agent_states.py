"""Pure tests of the states module: names, tables, stage labels, levels."""

import pytest

from worker_agent.states import PLANS, Event, Level, State, plan_named, sector_id


def walk_happy_path(plan_name: str) -> list[str]:
    plan = plan_named(plan_name)
    state, seen = State.Empty, [State.Empty.value]
    while state is not State.Finished:
        event = plan.happy_event(state)
        assert event is not None, f"{plan_name}: no way out of {state}"
        state = plan.next_state(state, event)
        seen.append(state.value)
        assert len(seen) < 40, "happy path loops"
    return seen


HAPPY_PATHS = {
    "sealer": [
        "Empty", "Allocated", "DealsAcquired", "PieceAdded", "TreeDBuilt", "TicketAssigned",
        "PC1Done", "PC2Done", "PCSubmitted", "PCLanded", "Persisted", "PersistanceSubmitted",
        "SeedAssigned", "C1Done", "C2Done", "ProofSubmitted", "Finished",
    ],
    "snapup": [
        "Empty", "Allocated", "PieceAdded", "TreeDBuilt", "SnapEncoded", "SnapProved",
        "Persisted", "Finished",
    ],
    "rebuild": [
        "Empty", "Allocated", "PieceAdded", "TreeDBuilt", "PC1Done", "PC2Done", "SealedChecked",
        "SnapDone", "Persisted", "Finished",
    ],
    "unseal": ["Empty", "Allocated", "Unsealed", "Finished"],
}  # fmt: skip


@pytest.mark.parametrize("plan_name", sorted(HAPPY_PATHS))
def test_happy_path_walks_from_empty_to_finished(plan_name):
    assert walk_happy_path(plan_name) == HAPPY_PATHS[plan_name]


def test_state_names_and_order_match_damocles():
    assert [s.value for s in State][:18] == HAPPY_PATHS["sealer"][:7] + [
        "PC2Done", "SyntheticPoRepNeeded", "PCSubmitted", "PCLanded", "Persisted",
        "PersistanceSubmitted", "SeedAssigned", "C1Done", "C2Done", "ProofSubmitted", "Finished",
    ]  # fmt: skip
    assert State("PersistanceSubmitted") is State.PersistanceSubmitted  # the original's spelling
    assert len(State) == 26


def test_branches_of_the_sealer_table():
    sealer = plan_named("sealer")
    assert sealer.next_state(State.PCSubmitted, Event.ReSubmitPC) is State.PC2Done
    assert sealer.next_state(State.ProofSubmitted, Event.ReSubmitProof) is State.C2Done
    assert sealer.next_state(State.PC1Done, Event.PC2NeedSyntheticProof) is (
        State.SyntheticPoRepNeeded
    )
    assert sealer.next_state(State.SyntheticPoRepNeeded, Event.SyntheticPoRep) is State.PC2Done
    assert sealer.next_state(State.Allocated, Event.AcquireDealsV2) is State.DealsAcquired
    assert sealer.next_state(State.C1Done, Event.C1) is None  # not in the table


def test_rebuild_snap_branch_and_snapup_repersist():
    rebuild = plan_named("rebuild")
    path = [State.SealedChecked]
    for event in (Event.AddPiece, Event.BuildTreeD, Event.SnapEncode, Event.SnapProve):
        path.append(rebuild.next_state(path[-1], event))
    assert path[-1] is State.SnapDone
    assert plan_named("snapup").next_state(State.Persisted, Event.RePersist) is State.SnapProved


@pytest.mark.parametrize(
    ("plan_name", "state", "label"),
    [
        ("sealer", State.Empty, "-"),
        ("sealer", State.Allocated, "AcquireDeals"),
        ("sealer", State.TicketAssigned, "PC1"),
        ("sealer", State.PC2Done, "SubmitPreCommit"),
        ("sealer", State.PersistanceSubmitted, "WaitSeed"),
        ("sealer", State.C1Done, "C2"),
        ("sealer", State.ProofSubmitted, "WaitProofLanded"),
        ("sealer", State.Finished, "-"),
        ("snapup", State.Allocated, "AddPieces"),
        ("snapup", State.TreeDBuilt, "SnapEncode"),
        ("snapup", State.Persisted, "SubmitSnapupProof"),
        ("rebuild", State.TreeDBuilt, "PC1"),
        ("rebuild", State.PC2Done, "C1"),
        ("rebuild", State.SealedChecked, "PrepareForSnapup"),
        ("unseal", State.Allocated, "Unseal"),
        ("unseal", State.Unsealed, "UploadPiece"),
    ],
)
def test_stage_labels(plan_name, state, label):
    assert plan_named(plan_name).stage(state) == label


def test_valid_resume_states_are_the_plans_own():
    unseal = [s.value for s in plan_named("unseal").states]
    assert unseal == ["Empty", "Allocated", "Finished", "Aborted", "Unsealed"]
    sealer = plan_named("sealer").states
    assert State.Aborted in sealer and State.SnapEncoded not in sealer


def test_levels_prefixes_and_unknown_plan():
    assert [str(level) for level in Level] == ["temporary", "permanent", "abort", "critical"]
    with pytest.raises(KeyError, match="valid plans: sealer, snapup, rebuild, unseal"):
        plan_named("niporep")
    assert set(PLANS) == {"sealer", "snapup", "rebuild", "unseal"}
    assert sector_id(10000, 2) == "s-t010000-2"


def test_reachability_follows_the_table():
    sealer = plan_named("sealer")
    assert State.Finished in sealer.reachable_from(State.C1Done)
    assert State.C2Done in sealer.reachable_from(State.ProofSubmitted)  # ReSubmitProof
    assert State.PC1Done not in sealer.reachable_from(State.C1Done)
