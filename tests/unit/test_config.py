"""SPEC §7: the config is read exactly, and every refusal says file:line: path: why."""

from __future__ import annotations

import shutil
from decimal import Decimal
from ipaddress import ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating.model import Scope
from vmgated.config import Config, ConfigError, load_config
from vmgated.configparse import Endpoint, parse_duration_us, parse_endpoint

ROOT = Path(__file__).resolve().parents[2]
DECKS = ROOT / "tests" / "data" / "configs" / "decks"

BASE = """\
tenant: {name: Test Telecom, currency: USD}
state_dir: ./var
listen:
  hep: [{address: 127.0.0.1, port: 9060}]
  cdr: []
  metrics: {address: 127.0.0.1, port: 9108}
  control: ./var/control.sock
security:
  hep_auth_key: null
  allowed_sources: [127.0.0.0/8]
calls: {max_duration: 3h}
subscription:
  plan: Business
  limits: {vmgateclients: 2, concurrent_ports: 10, networks: 2}
  seat_packs: [10]
networks:
  - {id: net-a, name: Network A}
resellers:
  - {id: r-one, name: Reseller One, rate_plan: res}
join_codes:
  - {code: CODE-R1, network: net-a, reseller: r-one}
  - {code: CODE-D, network: net-a}
customers:
  - id: acme
    name: Acme
    billing_type: prepaid
    trunks:
      - {id: acme-1, addresses: ["127.0.0.1:5070"], rate_plan: cust}
      - {id: acme-net, addresses: ["10.1.0.0/24"], rate_plan: cust}
vmgateclients:
  - {id: gw-01, name: GW 01, network: net-a, join_code: CODE-R1,
     addresses: ["127.0.0.1:5080"], capture_id: 2001, rate_plan: cli}
  - {id: gw-02, name: GW 02, network: net-a, join_code: CODE-D,
     addresses: ["10.2.0.2"], capture_id: 2002, rate_plan: cli}
rate_plans:
  - {name: cust, scope: customer, deck: decks/customer.csv}
  - {name: cli, scope: vmgateclient, currency: USD, deck: decks/client.csv}
  - {name: res, scope: reseller, deck: decks/reseller.csv}
"""


def write(tmp_path: Path, text: str) -> Path:
    """The YAML at tmp_path/vmgated.yaml with the test decks beside it."""
    if not (tmp_path / "decks").exists():
        shutil.copytree(DECKS, tmp_path / "decks")
    path = tmp_path / "vmgated.yaml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str = BASE) -> Config:
    return load_config(write(tmp_path, text), env={})


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once in the base config"
    return text.replace(old, new)


def line_of(text: str, needle: str) -> int:
    """1-based line of the only line containing `needle`."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits}"
    return hits[0]


def refusals(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return [str(p) for p in info.value.problems]


def refused(tmp_path: Path, text: str, needle: str, path: str, message: str) -> None:
    """The config is refused with exactly `file:line: path: message` among its problems."""
    expected = f"{tmp_path / 'vmgated.yaml'}:{line_of(text, needle)}: {path}: {message}"
    problems = refusals(tmp_path, text)
    assert expected in problems, "\n".join(problems)


# -- the good path ---------------------------------------------------------------------------


def test_base_config_loads_into_records(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.tenant.name == "Test Telecom"
    assert config.tenant.currency == "USD"
    assert [t.id for t in config.trunks] == ["acme-1", "acme-net"]
    assert config.trunk("acme-1") is not None
    assert config.customer_of("acme-net") == config.customer("acme")
    gw1, gw2 = config.vmgateclients
    assert gw1.reseller == "r-one" and gw1.capture_id == 2001
    assert gw2.reseller is None  # CODE-D has no reseller: Direct
    assert config.reseller_of("gw-01") == config.reseller("r-one")
    assert config.reseller_of("gw-02") is None
    assert config.network_of("gw-02") == config.network("net-a")
    assert config.plans["cust"].scope is Scope.CUSTOMER
    assert len(config.plans["cust"].destinations) == 5
    assert config.calls.max_duration_us == 3 * 3600 * 1_000_000
    assert config.subscription.client_limit == 12
    assert config.security.allowed_sources == (ip_network("127.0.0.0/8"),)
    assert config.security.allows("127.0.0.9") and not config.security.allows("10.0.0.1")
    assert config.listen.hep[0].address == "127.0.0.1" and config.listen.hep[0].port == 9060
    assert config.listen.metrics.port == 9108
    assert config.source_files[0] == tmp_path / "vmgated.yaml"
    assert {p.name for p in config.source_files[1:]} == {
        "customer.csv",
        "client.csv",
        "reseller.csv",
    }
    assert config.plan_assignments() == {"cust": 2, "cli": 2, "res": 1}


def test_rater_prices_all_three_legs(tmp_path: Path) -> None:
    config = load(tmp_path)
    rated = config.rater().rate("442071234567", "acme-1", "gw-01", 1_795_000_000_000_000, 61)
    # 4420 at 0.0120/min, fee 0.0010, 30/6: 66 s → 0.0010 + 0.0132 = 0.014200
    assert rated.customer.amount == 14_200
    assert rated.reseller is not None and rated.reseller.plan == "res"


def test_example_config_in_conf_loads() -> None:
    config = load_config(ROOT / "conf" / "vmgated.yaml", env={})
    assert len(config.customers) >= 3 and len(config.trunks) >= 4
    assert {c.billing_type for c in config.customers} == {"prepaid", "postpaid"}
    assert len(config.networks) == 2 and len(config.resellers) == 2
    assert len(config.vmgateclients) == 5
    assert any(c.reseller is None for c in config.vmgateclients)
    assert any(j.reseller is None for j in config.join_codes)
    assert config.subscription.seat_packs == (10,)
    assert {p.scope for p in config.plans.values()} == set(Scope)
    assert all(p.destinations for p in config.plans.values())
    assert not config.warnings
    rated = config.rater().rate("442071234567", "acme-1", "gw-01", 1_795_000_000_000_000, 61)
    assert rated.customer.rated and rated.vmgateclient.rated


def test_defaults_when_optional_blocks_are_left_out(tmp_path: Path) -> None:
    text = BASE
    for block in ("state_dir: ./var\n", "calls: {max_duration: 3h}\n"):
        text = edit(block, "", text)
    start, end = text.index("listen:"), text.index("subscription:")
    text = text[:start] + text[end:]
    config = load(tmp_path, text)
    assert config.state_dir == tmp_path / "var"
    assert config.listen.control == tmp_path / "var" / "control.sock"
    assert [str(s) for s in config.listen.hep] == ["127.0.0.1:9060"]
    assert config.listen.cdr == ()
    assert str(config.listen.metrics) == "127.0.0.1:9108"
    assert config.security.hep_auth_key is None
    assert config.security.allows("::1") and config.security.allows("127.0.0.1")
    assert config.calls.max_duration_us == 3 * 3600 * 1_000_000
    assert config.metrics.per_account is True
    assert config.ledger.batch_max == 1000


def test_optional_extra_keys_metrics_and_ledger(tmp_path: Path) -> None:
    text = (
        BASE
        + "metrics: {per_account: false}\nledger: {batch_max: 64, batch_ms: 2, queue_max: 500}\n"
    )
    config = load(tmp_path, text)
    assert config.metrics.per_account is False
    assert (config.ledger.batch_max, config.ledger.batch_ms, config.ledger.queue_max) == (
        64,
        2,
        500,
    )


def test_ledger_batch_ms_zero_means_commit_at_once(tmp_path: Path) -> None:
    # It used to be read as the default 5 (`value or default` with value 0).
    config = load(tmp_path, BASE + "ledger: {batch_ms: 0}\n")
    assert config.ledger.batch_ms == 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("batch_max", "100001", "100001 must be between 1 and 100000"),
        ("queue_max", "99999999999999999999999", "must be between 1 and 10000000"),
        ("batch_ms", "10001", "10001 must be between 0 and 10000"),
    ],
)
def test_ledger_tuning_has_upper_bounds(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    text = BASE + f"ledger: {{{key}: {value}}}\n"
    problems = refusals(tmp_path, text)
    assert any(f"ledger.{key}: " in p and message in p for p in problems), problems


def test_listener_by_interface_and_auth_key(tmp_path: Path) -> None:
    text = edit(
        "hep: [{address: 127.0.0.1, port: 9060}]",
        "hep: [{interface: eth1, port: 9060}, {address: '::1', port: 9061}]",
    )
    text = edit("hep_auth_key: null", "hep_auth_key: s3cret", text)
    config = load(tmp_path, text)
    assert config.listen.hep[0].interface == "eth1" and config.listen.hep[0].address is None
    assert str(config.listen.hep[1]) == "[::1]:9061"
    assert config.security.hep_auth_key == b"s3cret"


def test_metrics_on_an_interface_is_refused_by_check_not_by_a_crash(tmp_path: Path) -> None:
    # `check` used to accept it and the daemon then died on an assert at start.
    text = edit("metrics: {address: 127.0.0.1, port: 9108}", "metrics: {interface: lo, port: 9108}")
    refused(tmp_path, text, "metrics: {interface", "listen.metrics.interface",
            "the metrics endpoint listens on one address; give address: instead")


def test_unquoted_digits_keep_their_source_text(tmp_path: Path) -> None:
    # YAML 1.1 reads 0011 as octal 9; a tech prefix must stay the digits written.
    text = edit(
        "rate_plan: cust}\n      - {id: acme-net",
        "rate_plan: cust, tech_prefix: 0011}\n      - {id: acme-net",
    )
    assert load(tmp_path, text).trunk("acme-1").tech_prefix == "0011"  # type: ignore[union-attr]


def test_inline_destinations_are_exact_decimals(tmp_path: Path) -> None:
    text = edit(
        "{name: res, scope: reseller, deck: decks/reseller.csv}",
        "{name: res, scope: reseller, destinations: [\n"
        "      {code: 44, description: UK, valid_since: 2026-01-01, rate_per_min: 0.0013,\n"
        "       billing_block_sec: 60}]}",
    )
    (row,) = load(tmp_path, text).plans["res"].destinations
    assert row.code == "44" and row.rate_per_min == Decimal("0.0013")
    assert row.billing_block_sec == 60


# -- relative paths and systemd --------------------------------------------------------------


def test_relative_paths_are_relative_to_the_yaml_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    path = write(conf, BASE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path, env={})
    assert config.state_dir == conf / "var"
    assert config.listen.control == conf / "var" / "control.sock"
    assert {c.deck for c in config.rate_plans} == {
        conf / "decks" / "customer.csv",
        conf / "decks" / "client.csv",
        conf / "decks" / "reseller.csv",
    }


def test_absolute_state_dir_is_kept(tmp_path: Path) -> None:
    config = load(tmp_path, edit("state_dir: ./var", "state_dir: /srv/vmgated"))
    assert config.state_dir == Path("/srv/vmgated")


def test_state_directory_env_overrides_state_dir(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    config = load_config(path, env={"STATE_DIRECTORY": "/var/lib/vmgated:/var/lib/other"})
    assert config.state_dir == Path("/var/lib/vmgated")
    assert config.listen.control == tmp_path / "var" / "control.sock"  # given explicitly


# -- durations and addresses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "us"),
    [
        ("90s", 90_000_000),
        ("15m", 900_000_000),
        ("3h", 10_800_000_000),
        (5400, 5_400_000_000),
        ("5400", 5_400_000_000),
        ("1.5h", 5_400_000_000),
        ("250ms", 250_000),
    ],
)
def test_durations(value: object, us: int) -> None:
    assert parse_duration_us(value) == us


@pytest.mark.parametrize("value", ["3x", "h", "-5s", "0", "1.2.3s", True, [3]])
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration_us(value)


def test_max_duration_longer_than_a_week_is_refused(tmp_path: Path) -> None:
    refused(
        tmp_path,
        edit("{max_duration: 3h}", "{max_duration: 8d}"),
        "max_duration",
        "calls.max_duration",
        "8d is longer than 7d; no call is held (or billed) that long",
    )
    config = load(tmp_path, edit("{max_duration: 3h}", "{max_duration: 7d}"))
    assert config.calls.max_duration_us == 7 * 86_400 * 1_000_000


@pytest.mark.parametrize("ident", ['"ac me"', '"ac\\x1b[31mme"', '"ac\\nme"', '""'])
def test_ids_with_spaces_or_control_characters_are_refused(tmp_path: Path, ident: str) -> None:
    text = edit("- id: acme", f"- id: {ident}")
    problems = refusals(tmp_path, text)
    assert any(p.endswith("must be a non-empty id without spaces or control characters")
               for p in problems), problems


def test_duration_refusal_is_located(tmp_path: Path) -> None:
    text = edit("{max_duration: 3h}", "{max_duration: 3 hours}")
    refused(
        tmp_path,
        text,
        "max_duration",
        "calls.max_duration",
        "'3 hours' is not a duration; write e.g. 90s, 15m, 3h or 5400",
    )


@pytest.mark.parametrize(
    ("text", "network", "port"),
    [
        ("10.0.0.1", "10.0.0.1/32", None),
        ("10.0.0.1:5060", "10.0.0.1/32", 5060),
        ("2001:db8::1", "2001:db8::1/128", None),
        ("[2001:db8::1]", "2001:db8::1/128", None),
        ("[2001:db8::1]:5060", "2001:db8::1/128", 5060),
        ("10.0.0.0/24", "10.0.0.0/24", None),
        ("10.0.0.0/24:5060", "10.0.0.0/24", 5060),
        ("2001:db8::/64", "2001:db8::/64", None),
        ("[2001:db8::/64]:5061", "2001:db8::/64", 5061),
    ],
)
def test_address_forms(text: str, network: str, port: int | None) -> None:
    assert parse_endpoint(text) == Endpoint(ip_network(network), port)


def test_endpoint_matching() -> None:
    host = parse_endpoint("10.0.0.1:5060")
    assert host.matches("10.0.0.1", 5060) and not host.matches("10.0.0.1", 5061)
    anyport = parse_endpoint("10.0.0.1")
    assert anyport.matches("10.0.0.1", 1) and not anyport.matches("10.0.0.2", 1)
    cidr = parse_endpoint("10.0.0.0/24:5060")
    assert cidr.matches("10.0.0.200", 5060) and not cidr.matches("10.0.1.1", 5060)
    v6 = parse_endpoint("[2001:db8::/64]:5060")
    assert v6.matches("2001:db8::abcd", 5060) and not v6.matches("10.0.0.1", 5060)
    assert not host.matches("not-an-ip", 5060)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.7/24", "'10.0.0.7/24' has host bits set; did you mean 10.0.0.0/24?"),
        ("10.0.0.1:99999", "'10.0.0.1:99999': port '99999' must be a number between 1 and 65535"),
        ("[2001:db8::1", "'[2001:db8::1': missing ']' after an IPv6 address"),
        ("gw.example:5060", "'gw.example:5060' is not an address; write ip, ip:port, [v6]:port "
         "or a CIDR like 10.0.0.0/24"),
    ],
)  # fmt: skip
def test_bad_addresses_are_refused_with_the_right_form(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        parse_endpoint(text)
    assert str(info.value) == message
    config = edit('["127.0.0.1:5070"]', f'["{text}"]')
    refused(tmp_path, config, text, "customers[0].trunks[0].addresses[0]", message)


# -- refusals, one per rule ------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    text = BASE + "tennant: {name: X}\n"
    refused(
        tmp_path,
        text,
        "tennant",
        "tennant",
        "unknown key; allowed here: tenant, state_dir, listen, security, calls, subscription, "
        "networks, resellers, join_codes, customers, vmgateclients, rate_plans, metrics, ledger",
    )


def test_unknown_nested_key(tmp_path: Path) -> None:
    text = edit(
        "rate_plan: cust}\n      - {id: acme-net", "rate_plna: cust}\n      - {id: acme-net"
    )
    refused(
        tmp_path,
        text,
        "rate_plna",
        "customers[0].trunks[0].rate_plna",
        "unknown key; allowed here: id, addresses, rate_plan, tech_prefix",
    )


def test_wrong_type_port(tmp_path: Path) -> None:
    text = edit("port: 9060}", "port: http}")
    refused(tmp_path, text, "port: http", "listen.hep[0].port", "'http' must be a whole number")


def test_wrong_type_list_expected(tmp_path: Path) -> None:
    text = edit("  - {id: net-a, name: Network A}", "  {id: net-a, name: Network A}").replace(
        "networks:\n  {", "networks: {"
    )
    refused(tmp_path, text, "networks: {", "networks", "must be a list, not a mapping")


def test_wrong_choice(tmp_path: Path) -> None:
    text = edit("billing_type: prepaid", "billing_type: credit")
    refused(
        tmp_path,
        text,
        "billing_type",
        "customers[0].billing_type",
        "'credit' must be one of prepaid, postpaid",
    )


def test_missing_required_key(tmp_path: Path) -> None:
    text = edit("  - id: acme\n", "  - name2: x\n").replace(
        "name2: x\n    name: Acme", "name: Acme"
    )
    refused(tmp_path, text, "name: Acme", "customers[0].id", "is required")


def test_key_given_twice(tmp_path: Path) -> None:
    text = edit("calls: {max_duration: 3h}", "calls: {max_duration: 3h, max_duration: 1h}")
    refused(tmp_path, text, "max_duration", "calls.max_duration", "key given twice; keep one")


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    text = edit("  - {id: net-a, name: Network A}", "  - {id: net-a, name: Network A")
    problems = refusals(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'vmgated.yaml'}:")
    assert "not valid YAML" in problems[0]


def test_dangling_network(tmp_path: Path) -> None:
    text = edit(
        "{id: gw-02, name: GW 02, network: net-a", "{id: gw-02, name: GW 02, network: net-z"
    )
    refused(
        tmp_path,
        text,
        "net-z",
        "vmgateclients[1].network",
        "'net-z' is not a network; known: net-a",
    )


def test_dangling_reseller_on_join_code(tmp_path: Path) -> None:
    text = edit("reseller: r-one}", "reseller: r-two}")
    refused(
        tmp_path,
        text,
        "r-two",
        "join_codes[0].reseller",
        "'r-two' is not a reseller; known: r-one (leave it out for Direct)",
    )


def test_dangling_join_code(tmp_path: Path) -> None:
    text = edit("join_code: CODE-R1", "join_code: CODE-X")
    refused(
        tmp_path,
        text,
        "CODE-X",
        "vmgateclients[0].join_code",
        "'CODE-X' is not a join code; known: CODE-D, CODE-R1",
    )


def test_dangling_rate_plan(tmp_path: Path) -> None:
    text = edit('["10.1.0.0/24"], rate_plan: cust', '["10.1.0.0/24"], rate_plan: retail-z')
    refused(
        tmp_path,
        text,
        "retail-z",
        "customers[0].trunks[1].rate_plan",
        "'retail-z' is not a rate plan; known: cli, cust, res",
    )


def test_join_code_of_another_network(tmp_path: Path) -> None:
    text = edit("  - {id: net-a, name: Network A}", "  - {id: net-a}\n  - {id: net-b}")
    text = edit("{code: CODE-D, network: net-a}", "{code: CODE-D, network: net-b}", text)
    refused(
        tmp_path,
        text,
        "join_code: CODE-D",
        "vmgateclients[1].join_code",
        "'CODE-D' enrolls into network 'net-b', but this client is on 'net-a'; "
        "use a code of 'net-a'",
    )


@pytest.mark.parametrize(
    ("old", "new", "needle", "path", "message"),
    [
        (
            '["10.1.0.0/24"], rate_plan: cust',
            '["10.1.0.0/24"], rate_plan: res',
            "10.1.0.0/24",
            "customers[0].trunks[1].rate_plan",
            "'res' is a reseller plan; a trunk needs a customer plan",
        ),
        (
            "Reseller One, rate_plan: res",
            "Reseller One, rate_plan: cli",
            "Reseller One",
            "resellers[0].rate_plan",
            "'cli' is a vmgateclient plan; a reseller needs a reseller plan",
        ),
        (
            '["10.2.0.2"], capture_id: 2002, rate_plan: cli',
            '["10.2.0.2"], capture_id: 2002, rate_plan: cust',
            "10.2.0.2",
            "vmgateclients[1].rate_plan",
            "'cust' is a customer plan; a VMGateClient needs a vmgateclient plan",
        ),
    ],
)
def test_plan_scope_must_match_its_user(
    tmp_path: Path, old: str, new: str, needle: str, path: str, message: str
) -> None:
    text = edit(old, new)
    refused(tmp_path, text, needle, path, message)


def test_two_trunks_claiming_the_same_address(tmp_path: Path) -> None:
    text = edit('["10.1.0.0/24"]', '["127.0.0.1:5070"]')
    refused(
        tmp_path,
        text,
        "acme-net",
        "customers[0].trunks[1].addresses[0]",
        f"127.0.0.1:5070 overlaps 127.0.0.1:5070 of trunk 'acme-1' "
        f"(line {line_of(text, 'acme-1')}); a source address must identify one trunk",
    )


def test_a_cidr_covering_another_trunks_address(tmp_path: Path) -> None:
    text = edit('["127.0.0.1:5070"]', '["10.1.0.77"]')  # acme-1 inside acme-net's /24
    refused(
        tmp_path,
        text,
        "acme-net",
        "customers[0].trunks[1].addresses[0]",
        f"10.1.0.0/24 overlaps 10.1.0.77 of trunk 'acme-1' "
        f"(line {line_of(text, 'acme-1')}); a source address must identify one trunk",
    )


def test_any_port_address_overlaps_a_port_on_it_across_customers(tmp_path: Path) -> None:
    text = BASE.replace(
        "\nvmgateclients:",
        "\n  - id: other\n    billing_type: postpaid\n    trunks:\n"
        '      - {id: other-1, addresses: ["127.0.0.1"], rate_plan: cust}'
        "\nvmgateclients:",
    )
    refused(
        tmp_path,
        text,
        '"127.0.0.1"]',
        "customers[1].trunks[0].addresses[0]",
        f"127.0.0.1 overlaps 127.0.0.1:5070 of trunk 'acme-1' "
        f"(line {line_of(text, 'acme-1')}); a source address must identify one trunk",
    )


def test_same_ip_different_ports_is_not_an_overlap(tmp_path: Path) -> None:
    text = edit('["10.1.0.0/24"]', '["127.0.0.1:5071"]')
    assert load(tmp_path, text).trunk("acme-net") is not None


def test_two_clients_claiming_the_same_address(tmp_path: Path) -> None:
    text = edit('["10.2.0.2"]', '["127.0.0.0/30"]')
    refused(
        tmp_path,
        text,
        "127.0.0.0/30",
        "vmgateclients[1].addresses[0]",
        f"127.0.0.0/30 overlaps 127.0.0.1:5080 of VMGateClient 'gw-01' "
        f"(line {line_of(text, '127.0.0.1:5080')}); a destination address must identify one "
        "VMGateClient",
    )


def _clients(n: int) -> str:
    return "".join(
        f"  - {{id: extra-{i}, network: net-a, capture_id: {3000 + i}, rate_plan: cli}}\n"
        for i in range(n)
    )


def test_more_clients_than_subscription_and_seat_packs(tmp_path: Path) -> None:
    # limit = 2 + seat pack 10 = 12; base has 2 clients, 10 more is exactly the limit.
    at_limit = BASE.replace("rate_plans:", _clients(10) + "rate_plans:")
    assert len(load(tmp_path, at_limit).vmgateclients) == 12
    over = BASE.replace("rate_plans:", _clients(11) + "rate_plans:")
    refused(
        tmp_path,
        over,
        "extra-10,",
        "vmgateclients[12]",
        "13 VMGateClients but the subscription allows 12 (Business 2 + seat packs 10); "
        "add a seat pack or remove a client",
    )


def test_more_networks_than_subscription(tmp_path: Path) -> None:
    text = edit(
        "  - {id: net-a, name: Network A}",
        "  - {id: net-a, name: Network A}\n  - {id: net-b}\n  - {id: net-c}",
    )
    refused(
        tmp_path,
        text,
        "net-c",
        "networks[2]",
        "3 networks but the Business plan allows 2; upgrade the plan or remove a network",
    )


def test_seat_packs_come_in_10_or_50(tmp_path: Path) -> None:
    text = edit("seat_packs: [10]", "seat_packs: [10, 7]")
    refused(
        tmp_path,
        text,
        "seat_packs",
        "subscription.seat_packs[1]",
        "7 is not a seat pack; packs add 10 or 50 VMGateClients",
    )


@pytest.mark.parametrize(
    ("old", "new", "needle", "path", "message"),
    [
        (
            "{id: acme-net,",
            "{id: acme-1,",
            '["10.1.0.0/24"]',
            "customers[0].trunks[1]",
            "trunk 'acme-1' is defined twice; ids must be unique",
        ),
        (
            "{id: gw-02,",
            "{id: gw-01,",
            "{id: gw-01, name: GW 02",
            "vmgateclients[1]",
            "VMGateClient 'gw-01' is defined twice; ids must be unique",
        ),
        (
            "{code: CODE-D,",
            "{code: CODE-R1,",
            "{code: CODE-R1, network: net-a}",
            "join_codes[1]",
            "join code 'CODE-R1' is defined twice; ids must be unique",
        ),
        (
            "{name: res, scope: reseller,",
            "{name: cli, scope: reseller,",
            "reseller.csv",
            "rate_plans[2]",
            "rate plan 'cli' is defined twice; ids must be unique",
        ),
        (
            "capture_id: 2002",
            "capture_id: 2001",
            '["10.2.0.2"]',
            "vmgateclients[1].capture_id",
            "2001 is already the capture id of client 'gw-01'; each must be unique",
        ),
    ],
)
def test_duplicate_ids(
    tmp_path: Path, old: str, new: str, needle: str, path: str, message: str
) -> None:
    refused(tmp_path, edit(old, new), needle, path, message)


def test_deck_errors_keep_the_decks_file_line_and_field(tmp_path: Path) -> None:
    # decks/bad.csv line 3: "+4420" is not numeric, and -0.5 is a negative rate.
    text = edit("deck: decks/reseller.csv", "deck: decks/bad.csv")
    problems = refusals(tmp_path, text)
    deck = Path("decks/bad.csv")
    shown = [p for p in problems if "bad.csv:" in p]
    assert len(shown) == 2, problems
    assert shown[0].endswith(
        f"{deck}:3: code: '+4420' is not numeric; a code is digits only "
        "(write 4420, not +44 20), or empty for the catch-all"
    )
    assert shown[1].endswith(f"{deck}:3: rate_per_min: '-0.5' is negative; rates must be >= 0")


def test_missing_deck_file(tmp_path: Path) -> None:
    text = edit("deck: decks/reseller.csv", "deck: decks/nope.csv")
    problems = refusals(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{tmp_path / 'vmgated.yaml'}:{line_of(text, 'nope.csv')}: rate_plans[2].deck: cannot read "
    )
    assert problems[0].endswith("nope.csv: No such file or directory")


def test_a_deck_saved_as_windows_1252_says_where_and_what_to_do(tmp_path: Path) -> None:
    text = edit("deck: decks/reseller.csv", "deck: decks/koeln.csv")
    write(tmp_path, text)
    (tmp_path / "decks" / "koeln.csv").write_bytes(
        b"code,description,valid_since,valid_until,rate_per_min,connection_fee,"
        b"connection_sec,billing_block_sec\n49221,K\xf6ln,2026-01-01,,0.01,,,\n"
    )
    problems = refusals(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].endswith(
        "koeln.csv: not UTF-8 text (byte 0xf6 on line 2); save it as UTF-8"
    ), problems


def test_inline_destination_error_points_at_the_yaml_field(tmp_path: Path) -> None:
    text = edit(
        "{name: res, scope: reseller, deck: decks/reseller.csv}",
        "{name: res, scope: reseller, destinations: [\n"
        "      {code: 44, rate_per_min: 0.001},\n"
        "      {code: +44, rate_per_min: 0.002}]}",
    )
    refused(
        tmp_path,
        text,
        "+44",
        "rate_plans[2].destinations[1].code",
        "'+44' is not numeric; a code is digits only (write 4420, not +44 20), or empty for "
        "the catch-all",
    )


def test_plan_currency_must_be_the_tenant_currency(tmp_path: Path) -> None:
    text = edit(
        "{name: cli, scope: vmgateclient, currency: USD,",
        "{name: cli, scope: vmgateclient, currency: EUR,",
    )
    refused(
        tmp_path,
        text,
        "currency: EUR",
        "rate_plans[1].currency",
        "'EUR' differs from the tenant currency 'USD'; multi-currency billing is not supported yet",
    )


def test_empty_allowed_sources_would_drop_everything(tmp_path: Path) -> None:
    text = edit("allowed_sources: [127.0.0.0/8]", "allowed_sources: []")
    refused(
        tmp_path,
        text,
        "allowed_sources",
        "security.allowed_sources",
        "an empty list would drop every datagram; list the SIP servers' networks "
        "(0.0.0.0/0 and ::/0 accept any source)",
    )


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    text = edit("join_code: CODE-R1", "join_code: CODE-X")
    text = edit('["10.1.0.0/24"], rate_plan: cust', '["10.1.0.0/24"], rate_plan: res', text)
    text = edit("port: 9060}", "port: 0}", text)
    problems = refusals(tmp_path, text)
    assert len(problems) == 3
    lines = [int(p.split(":")[1]) for p in problems]
    assert lines == sorted(lines)  # in file order


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml", env={})
    assert str(info.value) == (
        f"{tmp_path / 'missing.yaml'}: cannot read the config: No such file or directory"
    )


def test_missing_rate_plan_is_a_warning_not_a_refusal(tmp_path: Path) -> None:
    text = edit('["10.1.0.0/24"], rate_plan: cust', '["10.1.0.0/24"]')
    config = load(tmp_path, text)
    assert [str(w) for w in config.warnings] == [
        f"{tmp_path / 'vmgated.yaml'}:{line_of(text, 'acme-net')}: customers[0].trunks[1]: "
        "trunk 'acme-net' has no rate_plan; its charges will be unrated"
    ]


def test_a_missing_section_is_reported_once(tmp_path: Path) -> None:
    start, end = BASE.index("subscription:"), BASE.index("\nnetworks:") + 1
    text = BASE[:start] + BASE[end:]
    assert refusals(tmp_path, text) == [f"{tmp_path / 'vmgated.yaml'}:1: subscription: is required"]


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    problems = refusals(tmp_path, "")
    assert problems == [
        f"{tmp_path / 'vmgated.yaml'}:1: is empty; expected a mapping with keys tenant, "
        "state_dir, listen, security, calls, subscription, networks, resellers, join_codes, "
        "customers, vmgateclients, rate_plans, metrics, ledger"
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(0, 128),
    st.none() | st.integers(1, 65535),
)
def test_endpoint_text_round_trips_and_matches_its_own_address(
    addr: object, prefix: int, port: int | None
) -> None:
    bits = 32 if ip_network(str(addr)).version == 4 else 128
    net = ip_network(f"{addr}/{min(prefix, bits)}", strict=False)
    endpoint = Endpoint(net, port)
    assert parse_endpoint(str(endpoint)) == endpoint
    assert endpoint.matches(str(net.network_address), port or 5060)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**6), st.sampled_from(["", "s", "m", "h"]))
def test_duration_units_are_exact(n: int, unit: str) -> None:
    scale = {"": 1, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration_us(f"{n}{unit}") == n * scale * 1_000_000
