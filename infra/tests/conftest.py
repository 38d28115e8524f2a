"""Shared fixtures: the template as CloudFormation reads it, and helpers to resolve it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
CONFIG_RS = ROOT / "gpu-worker" / "worker" / "src" / "config.rs"
# The engine's settings, shared by the worker (flattened into its config) and the `ocr` tool.
ENGINE_SETTINGS_RS = ROOT / "gpu-worker" / "engine" / "src" / "settings.rs"
AWS_CONFIG_RS = ROOT / "functions" / "aws" / "src" / "config.rs"
AWS_PROCESS_RS = ROOT / "functions" / "aws" / "src" / "process.rs"
METRICS_RS = ROOT / "gpu-worker" / "worker" / "src" / "metrics.rs"
CLOUDWATCH_RS = ROOT / "gpu-worker" / "worker" / "src" / "cloudwatch.rs"
BOOTSTRAP = ROOT / "infra" / "worker" / "bootstrap.sh"
UNIT = ROOT / "infra" / "worker" / "ocr-fleet-worker.service"
MYSQL_RS = ROOT / "functions" / "aws" / "src" / "mysql.rs"


def load_template(path: Path = TEMPLATE) -> dict:
    tpl, problems = decode(str(path))
    assert not problems, problems
    return json.loads(json.dumps(tpl, default=str))


@pytest.fixture(scope="session")
def tpl() -> dict:
    return load_template()


@pytest.fixture(scope="session")
def transformed() -> dict:
    """The template after the SAM transform, as CloudFormation receives it: the roles, policies
    and managed policies SAM generates for the functions are visible here, not in template.yaml.
    Offline: no AWS call (no policy names to look up), CodeUri replaced by an S3 URI."""
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    tpl = load_template()
    for r in tpl["Resources"].values():
        if r["Type"] == "AWS::Serverless::Function":
            r["Properties"]["CodeUri"] = "s3://bucket/key"
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name="us-east-1"))
    return translator.translate(tpl, parameter_values={}, get_managed_policy_map=lambda: {})


@pytest.fixture()
def sandbox(tpl, tmp_path):
    """A worker instance's root to run bootstrap.sh in (worker_sandbox.make_sandbox)."""
    from worker_sandbox import make_sandbox

    return make_sandbox(tpl, tmp_path)


def resources_of(tpl: dict, type_: str) -> dict:
    """The template's resources of one type, by logical id."""
    return {k: r for k, r in tpl["Resources"].items() if r["Type"] == type_}


@pytest.fixture(scope="session")
def defaults(tpl) -> dict:
    return {k: p.get("Default") for k, p in tpl["Parameters"].items()}


def resolve(value, defaults: dict):
    """A scalar property with Refs to parameters replaced by their defaults."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return defaults[value["Ref"]]
    return value


def num(value, defaults: dict) -> float:
    return float(resolve(value, defaults))


def user_data(tpl: dict) -> str:
    data = tpl["Resources"]["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    sub = data["Fn::Base64"]["Fn::Sub"]
    return sub[0] if isinstance(sub, list) else sub


def stack_env(tpl: dict) -> dict[str, str]:
    """KEY=value lines the user data writes to /etc/ocr-fleet/stack.env (unsubstituted)."""
    text = user_data(tpl)
    body = text.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    return dict(line.split("=", 1) for line in body.splitlines())


def substitute(text: str, values: dict[str, str] | None = None) -> str:
    """Fill ${X} / ${X.Attr} of an Fn::Sub string with plausible values; ${!x} becomes ${x}."""
    values = values or {}

    def one(m: re.Match) -> str:
        name = m.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name in values:
            return values[name]
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")

    return re.sub(r"\$\{([^}]+)\}", one, text)


def config_env_names() -> set[str]:
    """Every env name the worker reads: clap `env = "..."` in config.rs, in the engine settings and
    the shared resource/database settings (ocr_aws::config) it flattens, plus the few read directly
    (`env::var("LOG_FORMAT")` in ocr_aws::process, which the binary's logging uses)."""
    names = set()
    for f in (CONFIG_RS, ENGINE_SETTINGS_RS, AWS_CONFIG_RS):
        names |= set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', f.read_text()))
    assert len(names) > 30, names
    for f in [*(CONFIG_RS.parent / "bin").glob("*.rs"), AWS_PROCESS_RS]:
        names |= set(re.findall(r'env::var\("([A-Z0-9_]+)"\)', f.read_text()))
    return names


def iam_statements(tpl: dict):
    """(resource, statement) for every inline IAM statement of roles and SAM functions."""
    for rid, r in tpl["Resources"].items():
        props = r.get("Properties", {})
        if r["Type"] == "AWS::IAM::Role":
            for pol in props.get("Policies", []):
                for st in pol["PolicyDocument"]["Statement"]:
                    yield rid, st
        elif r["Type"] == "AWS::Serverless::Function":
            for pol in props.get("Policies", []):
                if isinstance(pol, dict) and "Statement" in pol:
                    for st in pol["Statement"]:
                        yield rid, st


def _rule_value(node, values: dict):
    """Evaluates a Rules expression (the rule functions CloudFormation has) over parameter values."""
    if isinstance(node, dict):
        ((fn, arg),) = node.items()
        if fn == "Ref":
            return values[arg]
        args = [_rule_value(a, values) for a in arg] if isinstance(arg, list) else _rule_value(arg, values)
        if fn == "Fn::Equals":
            return str(args[0]) == str(args[1])
        if fn == "Fn::Not":
            return not args[0]
        if fn == "Fn::And":
            return all(args)
        if fn == "Fn::Or":
            return any(args)
        if fn == "Fn::Contains":
            return str(args[1]) in [str(v) for v in args[0]]
        if fn == "Fn::EachMemberIn":
            return all(str(v) in [str(w) for w in args[1]] for v in args[0])
        if fn == "Fn::EachMemberEquals":
            return all(str(v) == str(args[1]) for v in args[0])
        if fn == "Fn::Join":
            return args[0].join(str(v) for v in args[1])
        raise AssertionError(f"rule function {fn} not modelled")
    if isinstance(node, list):
        return [_rule_value(v, values) for v in node]
    return node


def broken_rules(tpl: dict, overrides: dict) -> list[str]:
    """Names of the template's Rules whose assertions fail for the defaults plus `overrides`,
    as CloudFormation evaluates them before it changes anything."""
    values = {}
    for k, p in tpl["Parameters"].items():
        v = overrides.get(k, p.get("Default"))
        if p["Type"] == "CommaDelimitedList" and isinstance(v, str):
            v = v.split(",") if v else [""]
        values[k] = v
    broken = []
    for name, rule in tpl.get("Rules", {}).items():
        if "RuleCondition" in rule and not _rule_value(rule["RuleCondition"], values):
            continue
        if not all(_rule_value(a["Assert"], values) for a in rule["Assertions"]):
            broken.append(name)
    return broken
