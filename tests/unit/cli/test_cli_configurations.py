"""datablock-admin on the real fixtures of other configurations: a corrupt flexible zone
(j, Enforced) and stale Manual hashes (k). Exit codes, text and --json documents (checked
against docs/schema-v1.json by the ``cli`` fixture) carry the policy's verdict."""

from __future__ import annotations

import pytest

from plh_crash import install_fixture


@pytest.fixture
def fixture_block(fixtures_dir, names):
    """A real fixture in /dev/shm, its foreign PIDs made dead (the fixtures' README)."""
    def copy(filename):
        name = names()
        install_fixture(fixtures_dir, filename, name)
        return name
    return copy


def read(name):
    with open("/dev/shm/" + name, "rb") as f:
        return f.read()


def test_flex_zone_mismatch_fails_diagnose_validate_heal_until_repaired(cli, fixture_block):
    name = fixture_block("j_flex_zone_corrupt.bin")
    before = read(name)
    for command in ("diagnose", "validate", "heal"):
        r = cli(command, name)
        assert r.rc == 1, r
        assert "flexzone-checksum-mismatch" in r.stdout, r
    d = cli("diagnose", name, "--json")
    assert d.rc == 1 and not d.json["healthy"]
    assert [f["severity"] for f in d.json["findings"]
            if f["code"] == "flexzone-checksum-mismatch"] == ["error"]
    assert read(name) == before
    dry = cli("heal", name, "--repair", "--yes", "--dry-run", "--json")
    assert dry.rc == 0 and dry.json["healthy"] and read(name) == before
    r = cli("validate", name, "--repair", "--yes")
    assert r.rc == 0, r
    assert "re-blessed the flexible zone's checksum" in r.stdout
    assert "cannot restore" in r.stderr             # the same warning as for slots
    after = read(name)
    assert after[1984:2016] != before[1984:2016] and after[8192:] == before[8192:]
    j = cli("validate", name, "--json")
    assert j.rc == 0 and j.json["checksum_policy"] == "ENFORCED" and j.json["findings"] == []
    assert cli("diagnose", name).rc == 0


def test_flex_zone_rebless_document(cli, fixture_block):
    name = fixture_block("j_flex_zone_corrupt.bin")
    before = read(name)
    r = cli("heal", name, "--repair", "--yes", "--json")
    assert r.rc == 0 and r.json["healthy"], r
    (rb,) = r.json["validate"]["reblessed"]
    assert rb["target"] == "flexzone_checksum" and "slot" not in rb
    assert rb["before"] == before[1984:2016].hex()


def test_manual_stale_hashes_are_information(cli, fixture_block):
    name = fixture_block("k_manual_policy_stale_hash.bin")
    before = read(name)
    for command in ("diagnose", "validate", "heal"):
        assert cli(command, name).rc == 0
    v = cli("validate", name, "--repair", "--yes", "--json")
    assert v.rc == 0 and not v.json["changed"] and v.json["checksum_policy"] == "MANUAL"
    assert {(f["code"], f["severity"], f["slot"]) for f in v.json["findings"]} == {
        ("checksum-unstamped", "info", 0), ("checksum-unstamped", "info", 3)}
    assert all("repair cannot re-bless it" in f["message"] for f in v.json["findings"])
    assert read(name) == before
