"""The Python API on other configurations: a flex-zone re-bless is reported apart from
slot re-blesses (``IntegrityReport.flexzone_reblessed``); Manual findings are info."""

from __future__ import annotations

from plh_crash import install_fixture, read_bytes

from pylabhub import recovery


def test_flexzone_reblessed_is_reported(fixtures_dir, names):
    name = names()
    path = install_fixture(fixtures_dir, "j_flex_zone_corrupt.bin", name)
    report = recovery.validate_integrity(name)
    assert not report.valid and [f.code for f in report.findings] == [
        "flexzone-checksum-mismatch"]
    assert report.findings[0].repairable and report.findings[0].field == "flexzone_checksum"
    before = read_bytes(path)
    dry = recovery.validate_integrity(name, repair=True, dry_run=True)
    assert dry.valid and dry.flexzone_reblessed and dry.reblessed == []
    assert read_bytes(path) == before
    done = recovery.validate_integrity(name, repair=True)
    assert done.valid and done.flexzone_reblessed and done.reblessed == [] and done.changed
    assert recovery.heal(name)["healthy"]


def test_manual_findings_are_information(fixtures_dir, names):
    name = names()
    install_fixture(fixtures_dir, "k_manual_policy_stale_hash.bin", name)
    report = recovery.validate_integrity(name, repair=True)
    assert report.valid and not report.changed and not report.flexzone_reblessed
    assert {(f.code, f.severity, f.slot) for f in report.findings} == {
        ("checksum-unstamped", "info", 0), ("checksum-unstamped", "info", 3)}
