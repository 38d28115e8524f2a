"""Database users and secrets (issue 11): each component logs in as its own MySQL user with its
own generated secret, the migrations as the master user, and no password is in any configuration:
the functions and the workers get Secrets Manager ARNs ("<arn>#password") and read them at start."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

from conftest import iam_statements, stack_env, substitute, user_data
from worker_sandbox import read_env, run_bootstrap, secret_arn

MASTER = "DatabaseSecret"
# role (its name in DB_ROLE_USERS) -> its secret and user.
ROLES = {"api": ("ApiDatabaseSecret", "ocr_api"), "upload": ("UploadDatabaseSecret", "ocr_upload"),
         "worker": ("WorkerDatabaseSecret", "ocr_worker")}
FUNCTION_ROLE = {"ApiFunction": "api", "OnUploadFunction": "upload"}
# Who may read which secret (GetSecretValue); no other role reads any.
READERS = {
    "ApiFunctionRole": {"ApiDatabaseSecret", "WebhookSecret"},
    "OnUploadFunctionRole": {"UploadDatabaseSecret"},
    # The migrations (master), the migrator setting the component users' passwords, its own login
    # and the webhooks' master key.
    "WorkerRole": {"DatabaseSecret", "ApiDatabaseSecret", "UploadDatabaseSecret", "WorkerDatabaseSecret",
                   "WebhookSecret"},
    # The proxy checks clients' passwords and logs in to MySQL with them.
    "DatabaseProxyRole": {"DatabaseSecret", "ApiDatabaseSecret", "UploadDatabaseSecret", "WorkerDatabaseSecret"},
}
PROXY = "ocr-prod-db-proxy.proxy-abc.us-east-1.rds.amazonaws.com"
# What the Rust side resolves with GetSecretValue: a secret's ARN, optionally "#<JSON key>".
SECRET_REF = re.compile(r"arn:aws:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}(#\w+)?")
# A URL that carries a password (mysql://user:password@host).
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@")


def secret_ids(tpl) -> list[str]:
    return [k for k, r in tpl["Resources"].items() if r["Type"] == "AWS::SecretsManager::Secret"]


def username(tpl, rid: str) -> str:
    return json.loads(tpl["Resources"][rid]["Properties"]["GenerateSecretString"]["SecretStringTemplate"])["username"]


def refs(value) -> set[str]:
    """Logical ids a Resource value names (Ref or GetAtt), "*" for a wildcard."""
    out = set()
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, dict) and "Ref" in v:
            out.add(v["Ref"])
        elif isinstance(v, dict) and "Fn::GetAtt" in v:
            out.add(v["Fn::GetAtt"][0])
        else:
            out.add(json.dumps(v) if not isinstance(v, str) else v)
    return out


def resolved(value, tpl) -> str:
    """A function environment value as Lambda would see it, with stand-in ARNs and endpoint."""
    values = {s: secret_arn(s) for s in secret_ids(tpl)} | {"DatabaseProxy.Endpoint": PROXY}
    if isinstance(value, dict) and "Ref" in value:
        name = value["Ref"]
        return values.get(name) or str(tpl["Parameters"].get(name, {}).get("Default", name))
    if isinstance(value, dict) and "Fn::Sub" in value:
        assert isinstance(value["Fn::Sub"], str), value
        return substitute(value["Fn::Sub"], values)
    assert isinstance(value, (str, int, float)), value
    return str(value)


def lambda_envs(transformed) -> dict[str, dict]:
    """Each function's environment after SAM merged the Globals into it."""
    return {k: r["Properties"].get("Environment", {}).get("Variables", {})
            for k, r in transformed["Resources"].items() if r["Type"] == "AWS::Lambda::Function"}


def paths_with(node, needle: str, path: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in paths_with(v, needle, f"{path}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in paths_with(v, needle, f"{path}[{i}]")]
    return [path] if isinstance(node, str) and needle in node else []


# ------------------------------------------------------------------ secrets and the proxy
def test_each_user_has_its_own_generated_secret(tpl):
    master = tpl["Resources"][MASTER]
    assert username(tpl, MASTER) == "ocr_fleet"
    for role, (rid, user) in ROLES.items():
        r = tpl["Resources"][rid]
        assert r["Type"] == "AWS::SecretsManager::Secret", rid
        assert username(tpl, rid) == user, rid
        gen, mgen = r["Properties"]["GenerateSecretString"], master["Properties"]["GenerateSecretString"]
        # Generated like the master's: a JSON object whose "password" is letters and digits.
        assert {k: v for k, v in gen.items() if k != "SecretStringTemplate"} == \
            {k: v for k, v in mgen.items() if k != "SecretStringTemplate"}, rid
        # Encrypted as the others are (the AWS managed key), with the same reasoned checkov skips.
        assert set(r["Properties"]) == set(master["Properties"]) and "KmsKeyId" not in r["Properties"], rid
        assert [s["id"] for s in r["Metadata"]["checkov"]["skip"]] == \
            [s["id"] for s in master["Metadata"]["checkov"]["skip"]], rid
    users = [username(tpl, MASTER)] + [user for _, user in ROLES.values()]
    assert len(set(users)) == len(users)


def test_the_proxy_authenticates_every_database_user(tpl):
    auth = tpl["Resources"]["DatabaseProxy"]["Properties"]["Auth"]
    assert [a["SecretArn"] for a in auth] == [{"Ref": MASTER}] + [{"Ref": rid} for rid, _ in ROLES.values()]
    for a in auth:
        assert (a["AuthScheme"], a["IAMAuth"], a["ClientPasswordAuthType"]) == \
            ("SECRETS", "DISABLED", "MYSQL_CACHING_SHA2_PASSWORD"), a


def test_secrets_are_read_only_by_their_users(transformed):
    """Least privilege by resource, on the template CloudFormation receives (SAM's output)."""
    readable: dict[str, set[str]] = {}
    for rid, st in iam_statements(transformed):
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if not any(a.startswith(("secretsmanager:", "kms:")) for a in actions):
            continue
        assert st["Effect"] == "Allow" and actions == ["secretsmanager:GetSecretValue"], (rid, st)
        assert "Condition" not in st, (rid, st)
        readable.setdefault(rid, set()).update(refs(st["Resource"]))
    assert readable == READERS


def test_functions_can_read_what_they_are_given(tpl, transformed):
    """Each function role reads exactly the secrets its environment names, and the worker role
    those its user data names: nothing more, and nothing a process would fail to read."""
    envs = lambda_envs(transformed)
    for fn in FUNCTION_ROLE:
        named = {n for v in envs[fn].values() for n in re.findall(r"\$\{(\w+)\}", json.dumps(v))}
        named |= {v["Ref"] for v in envs[fn].values() if isinstance(v, dict) and "Ref" in v}
        role = tpl["Resources"][fn]["Properties"]["Role"]["Fn::GetAtt"][0]
        assert named & set(secret_ids(tpl)) == READERS[role], fn
    env = stack_env(tpl)
    given = {v[2:-1] for k, v in env.items() if k.endswith("SECRET_ARN")}
    assert given == READERS["WorkerRole"]


# ------------------------------------------------------------------ no password in any configuration
def test_no_password_in_any_function_configuration(tpl, transformed):
    envs = lambda_envs(transformed)
    assert set(envs) == set(FUNCTION_ROLE)
    for fn, env in envs.items():
        assert "resolve:secretsmanager" not in json.dumps(env), fn
        for name, value in env.items():
            v = resolved(value, tpl)
            assert not URL_WITH_PASSWORD.search(v), (fn, name, v)
            if "PASSWORD" in name or "SECRET" in name:
                assert SECRET_REF.fullmatch(v), (fn, name, v)
    # Dynamic references to a secret's value are resolved only into the database instance's own
    # master credentials; never into a function, the user data or anything readable.
    assert paths_with(tpl, "{{resolve:") == [".Resources.Database.Properties.MasterUsername.Fn::Sub",
                                              ".Resources.Database.Properties.MasterUserPassword.Fn::Sub"]


def test_function_secrets_are_secrets_manager_references(tpl, transformed):
    envs = lambda_envs(transformed)
    for fn, role in FUNCTION_ROLE.items():
        rid, _ = ROLES[role]
        key = tpl["Resources"][rid]["Properties"]["GenerateSecretString"]["GenerateStringKey"]
        # The JSON field of its own secret that holds the password.
        assert envs[fn]["DATABASE_PASSWORD"] == {"Fn::Sub": "${%s}#%s" % (rid, key)}, fn
        assert SECRET_REF.fullmatch(resolved(envs[fn]["DATABASE_PASSWORD"], tpl)), fn
    # The webhook key is a plain string (no JSON template), so the reference has no "#key".
    assert "SecretStringTemplate" not in tpl["Resources"]["WebhookSecret"]["Properties"]["GenerateSecretString"]
    assert envs["ApiFunction"]["WEBHOOK_SECRET"] == {"Ref": "WebhookSecret"}
    assert "#" not in resolved(envs["ApiFunction"]["WEBHOOK_SECRET"], tpl)
    assert "WEBHOOK_SECRET" not in envs["OnUploadFunction"]


def test_each_function_logs_in_as_its_own_user(tpl, transformed):
    envs = lambda_envs(transformed)
    assert "DATABASE_URL" not in tpl["Globals"]["Function"]["Environment"]["Variables"]
    db_name = tpl["Resources"]["Database"]["Properties"]["DBName"]
    for fn, role in FUNCTION_ROLE.items():
        url = urlsplit(resolved(envs[fn]["DATABASE_URL"], tpl))
        assert (url.scheme, url.username, url.password) == ("mysql", ROLES[role][1], None), fn
        assert (url.hostname, url.port, url.path) == (PROXY, 3306, f"/{db_name}"), fn
        assert parse_qs(url.query) == {"require_ssl": ["true"]}, fn


def test_functions_reach_secrets_manager(tpl):
    """They read their secrets at start from inside the VPC: through the Secrets Manager endpoint
    or the NAT gateway, and the created VPC has at least one of them."""
    from conftest import broken_rules
    res = tpl["Resources"]
    egress = res["FunctionSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert any((e["IpProtocol"], e["FromPort"], e["ToPort"], e["CidrIp"]) == ("tcp", 443, 443, "0.0.0.0/0")
               for e in egress)
    sm = res["SecretsManagerEndpoint"]
    assert sm["Condition"] == "CreateEndpoints" and sm["Properties"]["PrivateDnsEnabled"] is True
    assert sm["Properties"]["SubnetIds"] == tpl["Globals"]["Function"]["VpcConfig"]["SubnetIds"]["Fn::If"][1]
    ingress = res["EndpointSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert any((i["FromPort"], i["ToPort"], i["CidrIp"]) == (443, 443, {"Ref": "VpcCidr"}) for i in ingress)
    assert broken_rules(tpl, {"CreateNatGateway": "false", "CreateInterfaceEndpoints": "false"}) == \
        ["CreatedVpcHasAWayOut"]
    for nat, endpoints in (("true", "false"), ("false", "true")):
        assert broken_rules(tpl, {"CreateNatGateway": nat, "CreateInterfaceEndpoints": endpoints}) == []


# ------------------------------------------------------------------ the workers
def test_user_data_names_the_users_and_their_secrets(tpl):
    env = stack_env(tpl)
    assert (env["DB_MASTER_USER"], env["DB_SECRET_ARN"]) == (username(tpl, MASTER), "${%s}" % MASTER)
    for role, (rid, user) in ROLES.items():
        assert env[f"DB_{role.upper()}_USER"] == user == username(tpl, rid), role
        assert env[f"DB_{role.upper()}_SECRET_ARN"] == "${%s}" % rid, role
    assert env["WEBHOOK_SECRET_ARN"] == "${WebhookSecret}"
    # ARNs only: no secret's value in the user data (anyone allowed ec2:DescribeLaunchTemplateVersions
    # reads it).
    assert "resolve:" not in user_data(tpl) and "get-secret-value" not in user_data(tpl)


def test_worker_env_holds_references_and_every_role(tpl, sandbox):
    root, env, tmp = sandbox
    r = run_bootstrap(env)
    assert r.returncode == 0, r.stdout + r.stderr
    w = read_env(root / "etc" / "ocr-fleet" / "worker.env")
    ref = {rid: secret_arn(rid) + "#password" for rid in [MASTER] + [rid for rid, _ in ROLES.values()]}
    # Its own user, and the master for the migrations: URLs without a password, and references.
    for url_key, pw_key, user, rid in (("DATABASE_URL", "DATABASE_PASSWORD", "ocr_worker", "WorkerDatabaseSecret"),
                                       ("MIGRATION_DATABASE_URL", "MIGRATION_DATABASE_PASSWORD", username(tpl, MASTER),
                                        MASTER)):
        url = urlsplit(w[url_key])
        assert (url.username, url.password, url.hostname, url.port) == (user, None, PROXY, 3306), url_key
        assert parse_qs(url.query) == {"require_ssl": ["true"]}, url_key
        assert w[pw_key] == ref[rid], pw_key
    # Every component's user, each with its own secret: the migrator creates them all.
    entries = dict(e.split("=", 1) for e in w["DB_ROLE_USERS"].split(","))
    assert set(entries) == set(ROLES)
    for role, (rid, user) in ROLES.items():
        got_user, got_ref = entries[role].split(":", 1)
        assert (got_user, got_ref) == (user, ref[rid]), role
        assert SECRET_REF.fullmatch(got_ref), role
    assert w["WEBHOOK_SECRET"] == secret_arn("WebhookSecret") and SECRET_REF.fullmatch(w["WEBHOOK_SECRET"])
    # The bootstrap reads no secret, and no password is written anywhere.
    calls = (tmp / "calls").read_text()
    assert "secretsmanager" not in calls
    for f in (root / "etc" / "ocr-fleet").iterdir():
        text = f.read_text()
        assert "p4ss" not in text and not URL_WITH_PASSWORD.search(text), f
    for name, value in w.items():
        if "PASSWORD" in name or "SECRET" in name:
            assert SECRET_REF.fullmatch(value), (name, value)


def test_on_upload_waits_for_the_workers_users(tpl, transformed):
    """The workers create the database users (and migrate) before they signal; on-upload, whose
    failures dead-letter uploads, is created or updated only after the workers' group."""
    fn = transformed["Resources"]["OnUploadFunction"]
    depends = fn.get("DependsOn", [])
    assert "WorkerGroup" in (depends if isinstance(depends, list) else [depends])
    g = tpl["Resources"]["WorkerGroup"]
    assert g["CreationPolicy"]["ResourceSignal"]["Count"] == {"Ref": "MinWorkers"}
    assert g["UpdatePolicy"]["AutoScalingRollingUpdate"]["WaitOnResourceSignals"] is True
    # The bootstrap signals success only after the worker's /healthz, i.e. after migrating.
    from conftest import BOOTSTRAP
    text = BOOTSTRAP.read_text()
    assert text.index("healthz") < text.rindex("signal SUCCESS")
    assert "DB_MIGRATE=true" in text
