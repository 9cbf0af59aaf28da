"""Golden pf and ipfw rule sets, each checked against the grammar of facts §9 (the
simulated pfctl and ipfw accept exactly that grammar)."""

from __future__ import annotations

from supervisor.netfw import rules
from supervisor.netfw.network import parse_network_xml
from supervisor.vmm.sim import ipfw as sim_ipfw
from supervisor.vmm.sim import pfctl as sim_pfctl

NAT0 = parse_network_xml(
    "<network><name>nat0</name><forward mode='nat' dev='igb0'/><bridge name='vmnat0'/>"
    "<ip address='10.10.0.1' prefix='24'/><metadata>"
    "<p:portforward xmlns:p='urn:bhyve-supervisor:network:1' proto='tcp' port='2222' "
    "to='10.10.0.5' toport='22'/>"
    "<p:portforward xmlns:p='urn:bhyve-supervisor:network:1' proto='udp' port='5353' "
    "to='10.10.0.6'/></metadata></network>"
)
LAB = parse_network_xml(
    "<network><name>lab</name><forward mode='nat'/><bridge name='bridge7'/>"
    "<ip address='172.16.5.1' prefix='25'/></network>"
)

PF_GOLDEN = """\
# bhyvesupd network nat0: 10.10.0.0/24 on vmnat0, NAT out of igb0
nat on igb0 inet from 10.10.0.0/24 to any -> (igb0)
rdr on igb0 inet proto tcp to (igb0) port 2222 -> 10.10.0.5 port 22
rdr on igb0 inet proto udp to (igb0) port 5353 -> 10.10.0.6 port 5353
pass quick on vmnat0 inet from 10.10.0.0/24 to any keep state
pass in quick on igb0 inet proto tcp from any to 10.10.0.5 port 22 keep state
pass in quick on igb0 inet proto udp from any to 10.10.0.6 port 5353 keep state
"""


def test_pf_golden_and_grammar() -> None:
    text = rules.pf_rules(NAT0, "igb0")
    assert text == PF_GOLDEN
    parsed = sim_pfctl.parse(text)
    assert [k for k, _ in parsed] == ["nat", "nat", "nat", "filter", "filter", "filter"]
    assert rules.pf_load_argv("bhyvesupd", NAT0) == ["pfctl", "-a", "bhyvesupd/nat0", "-f", "-"]
    assert rules.pf_flush_argv("bhyvesupd", NAT0)[-2:] == ["-F", "all"]


def test_pf_without_port_forwards() -> None:
    text = rules.pf_rules(LAB, "em0")
    assert text.splitlines()[1:] == [
        "nat on em0 inet from 172.16.5.0/25 to any -> (em0)",
        "pass quick on bridge7 inet from 172.16.5.0/25 to any keep state",
    ]
    sim_pfctl.parse(text)


IPFW_GOLDEN = [
    "ipfw -q delete set 7",
    "ipfw -q nat 100 config if igb0 same_ports unreg_only reset "
    "redirect_port tcp 10.10.0.5:22 2222 redirect_port udp 10.10.0.6:5353 5353",
    "ipfw -q nat 101 config if em0 same_ports unreg_only reset",
    "ipfw -q add 10000 set 7 nat 100 ip4 from 10.10.0.0/24 to any out via igb0",
    "ipfw -q add 10010 set 7 nat 101 ip4 from 172.16.5.0/25 to any out via em0",
    "ipfw -q add 10020 set 7 nat 100 ip4 from any to me in via igb0",
    "ipfw -q add 10030 set 7 nat 101 ip4 from any to me in via em0",
]


def test_ipfw_golden_and_grammar() -> None:
    cmds = rules.ipfw_commands(
        [(NAT0, "igb0"), (LAB, "em0")], rule_set=7, rule_base=10000, nat_base=100
    )
    assert [" ".join(c) for c in cmds] == IPFW_GOLDEN
    for c in cmds:
        if c[2] == "add":
            assert sim_ipfw.RULE_RE.fullmatch(" ".join(c[6:])), c
        if c[2] == "nat":
            config = " ".join(c[5:])
            pos = 0
            while pos < len(config):
                m = sim_ipfw.NAT_CONFIG_RE.match(config, pos)
                assert m is not None, config[pos:]
                pos = m.end() + 1


def test_ipfw_shares_one_nat_instance_per_interface_and_drops_stale_ones() -> None:
    other = parse_network_xml(
        "<network><name>b</name><forward mode='nat'/><bridge name='vmb'/>"
        "<ip address='10.20.0.1' prefix='24'/></network>"
    )
    cmds = rules.ipfw_commands(
        [(LAB, "igb0"), (other, "igb0")], rule_set=7, rule_base=10000, nat_base=100
    )
    assert sum(1 for c in cmds if c[2] == "nat") == 1
    assert sum(1 for c in cmds if "in" in c) == 1
    assert rules.ipfw_stale_nat([100, 101], cmds) == [["ipfw", "-q", "nat", "101", "delete"]]
    empty = rules.ipfw_commands([], rule_set=7, rule_base=10000, nat_base=100)
    assert empty == [["ipfw", "-q", "delete", "set", "7"]]
