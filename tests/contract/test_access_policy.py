"""The access policy against the contract: one rule per RPC, each RPC's comment naming the role
its rule needs, and the roles numbered as the contract's `genai.gateway.v1.Role`."""

import re
from pathlib import Path

from genai.gateway.v1 import gateway_pb2

from services.common.contract import contract_services
from services.common.policy import ASSIGNABLE_ROLES, POLICY, Role

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PROTOS = sorted((ROOT / "protos" / "genai").glob("*/v1/*_service.proto"))

_PACKAGE = re.compile(r"^package\s+([\w.]+)\s*;", re.MULTILINE)
_SERVICE = re.compile(r"^service\s+(\w+)\s*\{")
_RPC = re.compile(r"^\s*rpc\s+(\w+)\s*\(")
_COMMENT = re.compile(r"^\s*//\s?(.*)$")
_ROLE = re.compile(r"\bRole:\s+(\w+)")


def _contract_methods() -> set[str]:
    return {f"{s.full_name}/{m.name}" for s in contract_services() for m in s.methods}


def _rpc_comments() -> dict[str, str]:
    """`"pkg.Service/Method"` -> the comment right above its `rpc` line, lines joined by a
    space, for every RPC of protos/genai/*/v1/*_service.proto."""
    comments: dict[str, str] = {}
    for path in SERVICE_PROTOS:
        text = path.read_text()
        package = _PACKAGE.search(text)
        assert package is not None, f"{path} has no package"
        service = ""
        above: list[str] = []
        for line in text.splitlines():
            if found := _SERVICE.match(line):
                service = found[1]
            if comment := _COMMENT.match(line):
                above.append(comment[1].strip())
                continue
            if (rpc := _RPC.match(line)) and service:
                comments[f"{package[1]}.{service}/{rpc[1]}"] = " ".join(above)
            above = []
    return comments


def test_the_service_protos_are_found() -> None:
    assert len(SERVICE_PROTOS) == len(contract_services()), SERVICE_PROTOS


def test_every_contract_rpc_has_exactly_one_rule_and_no_rule_names_another_method() -> None:
    methods = _contract_methods()
    missing = sorted(methods - POLICY.keys())
    unknown = sorted(POLICY.keys() - methods)
    assert not missing, f"contract RPCs without a rule in POLICY: {missing}"
    assert not unknown, f"POLICY rules for methods outside the contract: {unknown}"
    # A mapping holds one value per key; the same method spelt twice would be one key too.
    assert len(POLICY) == len(methods)


def test_the_proto_parse_finds_every_contract_rpc() -> None:
    assert set(_rpc_comments()) == _contract_methods()


def test_every_rpc_comment_names_the_role_of_its_rule() -> None:
    comments = _rpc_comments()
    wrong: list[str] = []
    for method, rule in sorted(POLICY.items()):
        comment = comments.get(method, "")
        named = _ROLE.findall(comment)
        if named != [rule.role.label]:
            wrong.append(
                f"{method}: comment says Role: {named or 'nothing'}, rule needs {rule.role.label!r}"
            )
            continue
        if rule.elevated is not None:
            after = comment[comment.index("Role:") :]
            if not re.search(rf"\b{rule.elevated.label}\b", after):
                wrong.append(
                    f"{method}: the comment's role does not mention the elevated role "
                    f"{rule.elevated.label!r}: {after!r}"
                )
    assert not wrong, "\n".join(wrong)


def test_role_labels_are_the_words_the_comments_use() -> None:
    assert [r.label for r in Role] == [
        "none",
        "viewer",
        "member",
        "tenant_admin",
        "platform_admin",
    ]
    assert all(Role.from_label(r.label) is r for r in Role)


def test_python_roles_are_numbered_as_the_contract_role_enum() -> None:
    contract = dict(gateway_pb2.Role.items())
    assert contract.pop("ROLE_UNSPECIFIED") == Role.NONE.value == 0
    assert {f"ROLE_{role.name}": role.value for role in Role if role is not Role.NONE} == contract
    assert {role.value for role in ASSIGNABLE_ROLES} == set(contract.values())
