"""Tests for geofg.io.ledger: durability, corruption tolerance, staleness and concurrency.

RELIABILITY.md rows: Z1 (temp files of killed writers), Z4 (empty units are done by ledger, not by
chunk files), Z8 (fsync of file and directory), N3 (resume reads only the ledger).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import uuid
import shutil
import stat
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from geofg.io.ledger import Ledger, UnitRecord

# --- strategies, declared once ---------------------------------------------------------------------

UNIT_IDS = st.sampled_from([f"r{r:04d}_c{c:04d}" for r in range(3) for c in range(3)])
HEXES = st.sampled_from(["0" * 64, "a" * 64, "f" * 64])
JSON_NUMBERS = st.one_of(
    st.integers(-(2**63), 2**63), st.floats(allow_nan=False, allow_infinity=False), st.booleans()
)
STATS = st.dictionaries(
    st.text(max_size=8),
    st.one_of(JSON_NUMBERS, st.lists(st.integers(0, 10**9), max_size=6)),
    max_size=4,
)
RECORDS = st.builds(
    UnitRecord,
    unit_id=UNIT_IDS,
    status=st.sampled_from(["done", "failed"]),
    input_fingerprint=HEXES,
    model_sha256=HEXES,
    config_hash=HEXES,
    attempt=st.integers(1, 1000),
    empty=st.booleans(),
    stats=STATS,
    run_id=st.text(alphabet="0123456789abcdef", min_size=1, max_size=12),
    finished_at=st.just("2026-01-02T03:04:05Z"),
    error=st.none() | st.text(max_size=40),
)

KEY = {"input_fingerprint": "in" * 32, "model_sha256": "mo" * 32, "config_hash": "cf" * 8}


def make_record(unit_id: str = "r0000_c0000", **overrides: object) -> UnitRecord:
    """A done record for KEY, with any field overridden."""
    fields: dict[str, object] = {
        "unit_id": unit_id,
        "status": "done",
        **KEY,
        "attempt": 1,
        "empty": False,
        "stats": {"valid_px": 42, "class_counts": [40, 2], "health_counts": [0, 1, 1]},
        "run_id": "run-a",
        "finished_at": "2026-01-02T03:04:05Z",
    }
    fields.update(overrides)
    return UnitRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "mosaic.zarr" / ".geofg")


def temp_files(ledger: Ledger) -> list[str]:
    return sorted(p.name for p in ledger.units_dir.glob(".*.tmp"))


# --- records -------------------------------------------------------------------------------------


@given(RECORDS)
def test_record_json_round_trip(record: UnitRecord) -> None:
    assert UnitRecord.from_json(record.to_json()) == record
    assert "\n" not in record.to_json()


def test_ledger_round_trip(ledger: Ledger) -> None:
    records = [make_record("r0000_c0000"), make_record("r0000_c0001", empty=True, stats={"valid_px": 0}),
               make_record("r0001_c0000", status="failed", error="OSError: disk full", attempt=3)]
    for record in records:
        ledger.write(record)
    assert Ledger(ledger.root).load() == {r.unit_id: r for r in records}


def test_missing_ledger_is_empty(ledger: Ledger) -> None:
    assert ledger.load() == {}
    assert ledger.sweep_temp() == 0
    ledger.remove_all()
    assert not ledger.root.exists(), "nothing is created until the first write"


def test_empty_unit_counts_as_done_without_chunk_files(ledger: Ledger) -> None:
    """Z4: an all-nodata unit has no chunk file; its record alone makes it done."""
    ledger.write(make_record(empty=True, stats={"valid_px": 0}))
    record = ledger.load()["r0000_c0000"]
    assert record.empty
    assert ledger.is_current(record, **KEY)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("unit_id", "../escape"),
        ("unit_id", "a/b"),
        ("unit_id", ""),
        ("unit_id", ".hidden"),
        ("status", "running"),
        ("attempt", 0),
        ("attempt", True),
        ("empty", 1),
        ("stats", [1, 2]),
        ("error", 3),
        ("run_id", None),
    ],
)
def test_invalid_records_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0] if field != "unit_id" else "unit id"):
        make_record(**{field: value})


def test_non_json_stats_are_rejected_before_any_write(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        ledger.write(make_record(stats={"mean": float("nan")}))
    assert ledger.load() == {}


@pytest.mark.parametrize(
    "text",
    [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"schema": 2}', b'{"schema": 1, "unit_id": "r0000_c0000"}'],
)
def test_from_json_rejects_non_records(text: bytes) -> None:
    with pytest.raises(ValueError):
        UnitRecord.from_json(text)


def test_from_json_rejects_unknown_fields() -> None:
    text = make_record().to_json().replace('"attempt"', '"surprise":1,"attempt"')
    with pytest.raises(ValueError, match="surprise"):
        UnitRecord.from_json(text)


# --- durability (Z8) -----------------------------------------------------------------------------


def test_write_fsyncs_file_then_renames_then_fsyncs_directory(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.write(make_record("r0000_c0000"))  # creates the folders; the next write is a plain one
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st_ = os.fstat(fd)
        events.append(("fsync-dir" if stat.S_ISDIR(st_.st_mode) else "fsync-file", st_.st_ino))
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        events.append(("replace", Path(str(dst)).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    ledger.write(make_record("r0000_c0001"))

    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync-file", "replace", "fsync-dir"]
    final = ledger.path_for("r0000_c0001")
    assert events[0][1] == final.stat().st_ino, "the fsynced file is the one renamed into place"
    assert events[1][1] == final.name
    assert events[2][1] == ledger.units_dir.stat().st_ino


def test_first_write_makes_new_directories_durable(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    synced_dirs: set[int] = set()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st_ = os.fstat(fd)
        if stat.S_ISDIR(st_.st_mode):
            synced_dirs.add(st_.st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    ledger.write(make_record())
    for directory in (ledger.root.parent.parent, ledger.root.parent, ledger.root, ledger.units_dir):
        assert directory.stat().st_ino in synced_dirs, f"{directory} entry not made durable"


def test_failed_write_leaves_old_record_and_no_temp(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    old = make_record(attempt=1)
    ledger.write(old)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        ledger.write(make_record(attempt=2))
    monkeypatch.undo()
    assert ledger.load() == {old.unit_id: old}
    assert temp_files(ledger) == []


# --- corruption and killed writers (Z1, N3) -------------------------------------------------------


def test_truncated_record_is_ignored_and_not_done(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    ledger.write(make_record("r0000_c0000"))
    ledger.write(make_record("r0000_c0001"))
    path = ledger.path_for("r0000_c0001")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # a writer killed mid-way (not ours: ours renames)

    with caplog.at_level(logging.WARNING, logger="geofg.io.ledger"):
        records = ledger.load()
    assert set(records) == {"r0000_c0000"}
    assert not ledger.is_current(records.get("r0000_c0001"), **KEY)
    assert "r0000_c0001" in caplog.text and "not done" in caplog.text


def test_record_under_another_units_name_is_ignored(ledger: Ledger) -> None:
    ledger.write(make_record("r0000_c0000"))
    shutil.copy(ledger.path_for("r0000_c0000"), ledger.path_for("r0009_c0009"))
    assert set(ledger.load()) == {"r0000_c0000"}


def test_unreadable_entries_are_ignored(ledger: Ledger) -> None:
    ledger.write(make_record("r0000_c0000"))
    ledger.path_for("r0000_c0001").mkdir()  # a directory where a record should be
    (ledger.units_dir / "notes.txt").write_text("hello")
    assert set(ledger.load()) == {"r0000_c0000"}


def test_stray_temp_files_are_ignored_then_swept(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    ledger.write(make_record("r0000_c0000"))
    partial = make_record("r0000_c0001").to_json().encode()[:30]
    for i in range(3):  # what a writer killed before its rename leaves
        (ledger.units_dir / f".r0000_c0001.{i:032x}.tmp").write_bytes(partial)

    with caplog.at_level(logging.WARNING, logger="geofg.io.ledger"):
        assert set(ledger.load()) == {"r0000_c0000"}
    assert "3 temp file(s)" in caplog.text
    assert ledger.sweep_temp() == 3
    assert temp_files(ledger) == []
    assert set(ledger.load()) == {"r0000_c0000"}


def test_sweep_temp_can_spare_fresh_files(ledger: Ledger) -> None:
    ledger.write(make_record())
    old = ledger.units_dir / ".r0000_c0000.old.tmp"
    fresh = ledger.units_dir / ".r0000_c0000.fresh.tmp"
    old.write_bytes(b"{")
    fresh.write_bytes(b"{")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    assert ledger.sweep_temp(min_age_s=3600) == 1
    assert temp_files(ledger) == [fresh.name]


def test_sweep_temp_of_some_units_spares_the_others(ledger: Ledger) -> None:
    """A lost Ray actor's units: their temp files go, other writers' stay (unit ids may share a
    prefix: r0000_c0001 is not r0000_c00010)."""
    ledger.write(make_record())  # creates the units folder
    for uid in ("r0000_c0001", "r0000_c00010", "r0000_c0002"):
        (ledger.units_dir / f".{uid}.{uuid.uuid4().hex}.tmp").write_bytes(b"{")
    assert ledger.sweep_temp(units=["r0000_c0001", "r0009_c0009"]) == 1
    assert sorted(n.split(".")[1] for n in temp_files(ledger)) == ["r0000_c00010", "r0000_c0002"]


# --- staleness -----------------------------------------------------------------------------------


def test_is_current_for_matching_done_record(ledger: Ledger) -> None:
    assert ledger.is_current(make_record(), **KEY)
    assert not ledger.is_current(None, **KEY)


@pytest.mark.parametrize("field", ["input_fingerprint", "model_sha256", "config_hash"])
def test_is_current_false_on_each_mismatch(ledger: Ledger, field: str) -> None:
    assert not ledger.is_current(make_record(**{field: "changed"}), **KEY)


def test_is_current_false_for_failed(ledger: Ledger) -> None:
    assert not ledger.is_current(make_record(status="failed", error="boom"), **KEY)


def test_done_replaces_failed_and_back(ledger: Ledger) -> None:
    failed = make_record(status="failed", error="CUDA OOM", attempt=1)
    done = make_record(status="done", attempt=2)
    ledger.write(failed)
    ledger.write(done)
    assert ledger.load() == {done.unit_id: done}
    again = make_record(status="failed", error="input changed", attempt=3)
    ledger.write(again)
    assert ledger.load() == {again.unit_id: again}
    assert len(list(ledger.units_dir.iterdir())) == 1


def test_remove_all_empties_atomically_and_ledger_is_reusable(ledger: Ledger) -> None:
    for i in range(5):
        ledger.write(make_record(f"r0000_c{i:04d}"))
    (ledger.root / ".units-removed-leftover").mkdir()  # an earlier remove_all killed mid-way
    ledger.remove_all()
    assert ledger.load() == {}
    assert sorted(p.name for p in ledger.root.iterdir()) == []
    ledger.write(make_record("r0001_c0001"))
    assert set(ledger.load()) == {"r0001_c0001"}


# --- stateful: random writes, corruptions, killed writers, reloads ----------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """Apply random steps to a real ledger and to a dict; load() must always equal the dict."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="geofg-ledger-")
        self.root = Path(self.tmp) / "m.zarr" / ".geofg"
        self.ledger = Ledger(self.root)
        self.model: dict[str, UnitRecord] = {}

    @rule(record=RECORDS)
    def write(self, record: UnitRecord) -> None:
        self.ledger.write(record)
        self.model[record.unit_id] = record

    @precondition(lambda self: self.model)
    @rule(data=st.data(), how=st.sampled_from(["truncate", "garbage", "empty"]))
    def corrupt(self, data: st.DataObject, how: str) -> None:
        unit_id = data.draw(st.sampled_from(sorted(self.model)))
        path = self.ledger.path_for(unit_id)
        raw = path.read_bytes()
        if how == "truncate":  # keep less than the closing "}\n"
            path.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 2))])
        elif how == "garbage":
            path.write_bytes(data.draw(st.binary(max_size=40).filter(lambda b: not b.strip().startswith(b"{"))))
        else:
            path.write_bytes(b"")
        del self.model[unit_id]

    @rule(record=RECORDS, cut=st.integers(0, 400))
    def killed_writer(self, record: UnitRecord, cut: int) -> None:
        """A writer killed before its rename leaves only a temp file: the unit's state is unchanged."""
        self.ledger.units_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.ledger.units_dir / f".{record.unit_id}.{os.urandom(16).hex()}.tmp"
        tmp.write_bytes(record.to_json().encode()[:cut])

    @rule()
    def sweep(self) -> None:
        self.ledger.sweep_temp()
        assert not list(self.ledger.units_dir.glob(".*.tmp")) if self.ledger.units_dir.exists() else True

    @rule()
    def remove_all(self) -> None:
        self.ledger.remove_all()
        self.model.clear()

    @rule()
    def reopen(self) -> None:
        self.ledger = Ledger(self.root)

    @invariant()
    def load_equals_model(self) -> None:
        assert self.ledger.load() == self.model

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


LedgerMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
TestLedgerStateful = LedgerMachine.TestCase


# --- concurrency ---------------------------------------------------------------------------------


def _write_units(root: str, worker: int, n: int) -> None:
    ledger = Ledger(root)
    for i in range(n):
        ledger.write(make_record(f"w{worker}_u{i:04d}", run_id=f"worker-{worker}"))
        ledger.write(make_record("shared", run_id=f"worker-{worker}", attempt=i + 1))


def test_two_processes_writing_one_ledger_lose_nothing(ledger: Ledger) -> None:
    ctx = multiprocessing.get_context("fork")
    n = 60
    procs = [ctx.Process(target=_write_units, args=(str(ledger.root), w, n)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = ledger.load()
    assert set(records) == {f"w{w}_u{i:04d}" for w in range(2) for i in range(n)} | {"shared"}
    assert records["shared"].run_id in {"worker-0", "worker-1"}
    assert temp_files(ledger) == []


def test_load_of_many_records_reads_on_threads(ledger: Ledger) -> None:
    """Enough records to take the threaded read path; one of them corrupt."""
    ledger.write(make_record("r0000_c0000"))
    expected = {}
    for i in range(600):
        record = make_record(f"r{i // 30:04d}_c{i % 30:04d}", attempt=i + 1)
        ledger.path_for(record.unit_id).write_text(record.to_json() + "\n")
        expected[record.unit_id] = record
    ledger.path_for("r0007_c0007").write_text('{"schema": 1, "unit_')
    del expected["r0007_c0007"]
    assert ledger.load() == expected
