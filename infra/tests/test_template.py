"""template.yaml: parameters, security posture, network, data, workers, outputs."""

from __future__ import annotations

import json
import re

import pytest

from conftest import BOOTSTRAP, ROOT, iam_statements, resolve, resources_of, stack_env, substitute, user_data

SENSITIVE_SERVICES = ("s3", "sqs", "secretsmanager", "rds", "kms", "dynamodb", "logs")


# ------------------------------------------------------------------ parameters
def test_parameter_defaults(tpl, defaults):
    p = tpl["Parameters"]
    assert defaults["StageName"] == "prod"
    assert defaults["GpuInstanceType"] == "g4dn.xlarge"
    assert p["WorkerAmiId"]["Type"] == "AWS::EC2::Image::Id"
    assert int(defaults["MinWorkers"]) == 2 and int(defaults["MaxWorkers"]) == 4
    # The engine the tests run on (MariaDB 10.11, Debian's) is the engine that ships.
    assert defaults["DatabaseEngineVersion"] == "10.11"
    assert defaults["VpcId"] == "" and defaults["DatabaseInstanceClass"].startswith("db.")
    for name in ("JwtIssuer", "JwtAudience", "SpotSharePercent", "ScaleOutQueueDepth",
                 "ScaleInQueueDepth", "BacklogPerWorkerTarget", "PrivateSubnetIds"):
        assert name in p


def test_worker_ami_is_pinned(tpl):
    """A concrete AMI id the stack keeps, never an SSM path CloudFormation would resolve again on
    every update (a new AMI is a new NVIDIA driver); deploy.sh pins and bumps it (test_deploy.py)."""
    p = tpl["Parameters"]["WorkerAmiId"]
    assert p["Type"] == "AWS::EC2::Image::Id" and "Default" not in p
    assert not any("SSM::Parameter" in q["Type"] for q in tpl["Parameters"].values())
    assert "/latest/ami-id" not in json.dumps(tpl) and "deeplearning/ami" not in json.dumps(tpl)
    assert "{{resolve:ssm:" not in json.dumps(tpl)
    lt = tpl["Resources"]["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert lt["ImageId"] == {"Ref": "WorkerAmiId"}
    from test_deploy import DLAMI
    assert f"DLAMI_PARAMETER={DLAMI}" in (ROOT / "scripts" / "deploy.sh").read_text()


def test_spot_share_mapping_covers_every_choice(tpl):
    m = tpl["Mappings"]["SpotShare"]
    for v in tpl["Parameters"]["SpotSharePercent"]["AllowedValues"]:
        assert int(v) + int(m[v]["OnDemandPercent"]) == 100


# ------------------------------------------------------------------ security
# What Lambda needs to attach a function to the VPC; it requires Resource "*" for these.
VPC_ENI_ACTIONS = {"ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
                   "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"}
# What the SSM agent needs for Session Manager and Run Command; these take no resource ARN.
SESSION_MANAGER_ACTIONS = {"ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
                           "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
                           "ssmmessages:OpenDataChannel", "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage",
                           "ec2messages:FailMessage", "ec2messages:GetEndpoint", "ec2messages:GetMessages",
                           "ec2messages:SendReply"}


def actions_of(st) -> list[str]:
    return st["Action"] if isinstance(st["Action"], list) else [st["Action"]]


@pytest.mark.parametrize("form", ["template", "transformed"])
def test_no_wildcard_actions_and_scoped_resources(tpl, transformed, form):
    # "transformed" also covers what SAM generates (policy templates such as SQSSendMessagePolicy
    # expand to `sqs:SendMessage*`; event sources add managed policies).
    doc = tpl if form == "template" else transformed
    for rid, st in iam_statements(doc):
        if st.get("Effect") != "Allow":
            continue
        actions = actions_of(st)
        for a in actions:
            assert "*" not in a, f"{rid}: wildcard action {a}"
        res = st.get("Resource")
        res = res if isinstance(res, list) else [res]
        if "*" in res:
            # Only actions without resource types: metrics (with a namespace condition), the
            # functions' VPC network interfaces and the workers' SSM agent; never a queue, bucket,
            # secret, log or database.
            assert (actions == ["cloudwatch:PutMetricData"] and st.get("Condition")) or \
                set(actions) <= VPC_ENI_ACTIONS or \
                (rid == "WorkerRole" and set(actions) <= SESSION_MANAGER_ACTIONS), f"{rid}: {st}"


def test_no_managed_policies_after_the_sam_transform(tpl, transformed):
    # SAM attaches AWSLambdaSQSQueueExecutionRole (sqs:ReceiveMessage/DeleteMessage/... on "*")
    # to a generated role for an SQS event source, and AWSLambdaBasicExecutionRole /
    # AWSLambdaVPCAccessExecutionRole (logs on "*") to every generated role: the functions have
    # explicit roles instead, so no role carries a managed policy.
    roles = {k: r for k, r in transformed["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    assert set(roles) == {"ApiFunctionRole", "OnUploadFunctionRole", "WorkerRole", "DatabaseProxyRole"}
    for rid, r in roles.items():
        assert not r["Properties"].get("ManagedPolicyArns"), f"{rid}: {r['Properties'].get('ManagedPolicyArns')}"
    for doc in (tpl, transformed):
        assert "AWSLambdaSQSQueueExecutionRole" not in json.dumps(doc)


def test_functions_use_their_own_explicit_roles(tpl, transformed):
    for fn in ("ApiFunction", "OnUploadFunction"):
        props = tpl["Resources"][fn]["Properties"]
        assert props["Role"] == {"Fn::GetAtt": [f"{fn}Role", "Arn"]}, fn
        assert "Policies" not in props, f"{fn}: Policies are ignored next to Role"
        role = tpl["Resources"][f"{fn}Role"]["Properties"]
        (st,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert st["Principal"] == {"Service": "lambda.amazonaws.com"} and st["Action"] == "sts:AssumeRole"
        assert transformed["Resources"][fn]["Properties"]["Role"] == {"Fn::GetAtt": [f"{fn}Role", "Arn"]}


# Each priority's upload-events queue (the bucket notifies uploads/<priority>/ to it).
UPLOAD_EVENTS_QUEUES = {"express": "UploadEventsExpressQueue", "bulk": "UploadEventsBulkQueue"}


def test_on_upload_role_is_least_privilege(tpl, transformed):
    stmts = {st["Sid"]: st for rid, st in iam_statements(tpl) if rid == "OnUploadFunctionRole"}
    assert set(stmts) == {"ConsumeUploadEvents", "SweepUploadEventsDeadLetters", "EnqueueJobs",
                          "ReadAndRejectUploads", "OwnLogs", "Secrets", "VpcNetworkInterfaces"}
    sweep = stmts["SweepUploadEventsDeadLetters"]
    assert sorted(actions_of(sweep)) == sorted(["sqs:ReceiveMessage", "sqs:DeleteMessage",
                                                "sqs:ChangeMessageVisibility"])
    assert sweep["Resource"] == {"Fn::GetAtt": ["UploadEventsDeadLetterQueue", "Arn"]}
    consume = stmts["ConsumeUploadEvents"]
    assert sorted(actions_of(consume)) == sorted(["sqs:ReceiveMessage", "sqs:DeleteMessage",
                                                  "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"])
    assert consume["Resource"] == [{"Fn::GetAtt": [q, "Arn"]} for q in UPLOAD_EVENTS_QUEUES.values()]
    # ... which are the queues the function's event source mappings read.
    mappings = [r for r in transformed["Resources"].values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert sorted(json.dumps(m["Properties"]["EventSourceArn"]) for m in mappings) == \
        sorted(json.dumps(r) for r in consume["Resource"])
    for mapping in mappings:
        assert mapping["Properties"]["FunctionName"] == {"Ref": "OnUploadFunctionAliaslive"}  # the alias
    assert actions_of(stmts["EnqueueJobs"]) == ["sqs:SendMessage"]
    assert stmts["EnqueueJobs"]["Resource"] == [{"Fn::GetAtt": ["ExpressQueue", "Arn"]},
                                                {"Fn::GetAtt": ["BulkQueue", "Arn"]}]
    assert sorted(actions_of(stmts["ReadAndRejectUploads"])) == ["s3:DeleteObject", "s3:GetObject"]
    assert stmts["ReadAndRejectUploads"]["Resource"] == {"Fn::Sub": "${UploadBucket.Arn}/uploads/*"}
    assert sorted(actions_of(stmts["OwnLogs"])) == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert stmts["OwnLogs"]["Resource"] == {"Fn::GetAtt": ["OnUploadLogGroup", "Arn"]}
    assert actions_of(stmts["Secrets"]) == ["secretsmanager:GetSecretValue"]
    assert stmts["Secrets"]["Resource"] == {"Ref": "UploadDatabaseSecret"}
    assert set(actions_of(stmts["VpcNetworkInterfaces"])) == VPC_ENI_ACTIONS


def test_api_role_is_least_privilege(tpl):
    stmts = {st["Sid"]: st for rid, st in iam_statements(tpl) if rid == "ApiFunctionRole"}
    assert set(stmts) == {"QueueDepth", "Uploads", "Outputs", "OwnLogs", "Secrets", "VpcNetworkInterfaces"}
    # The API reads queue depth for its 503s and sends no message.
    assert actions_of(stmts["QueueDepth"]) == ["sqs:GetQueueAttributes"]
    assert stmts["QueueDepth"]["Resource"] == [{"Fn::GetAtt": ["ExpressQueue", "Arn"]},
                                               {"Fn::GetAtt": ["BulkQueue", "Arn"]}]
    assert sorted(actions_of(stmts["Uploads"])) == ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    assert stmts["Uploads"]["Resource"] == {"Fn::Sub": "${UploadBucket.Arn}/uploads/*"}
    # Outputs too large to answer inline, stored for a redirect (and deleted with their job).
    assert sorted(actions_of(stmts["Outputs"])) == ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
    assert stmts["Outputs"]["Resource"] == {"Fn::Sub": "${UploadBucket.Arn}/outputs/*"}
    assert stmts["OwnLogs"]["Resource"] == {"Fn::GetAtt": ["ApiLogGroup", "Arn"]}
    assert actions_of(stmts["Secrets"]) == ["secretsmanager:GetSecretValue"]
    assert stmts["Secrets"]["Resource"] == [{"Ref": "ApiDatabaseSecret"}, {"Ref": "WebhookSecret"}]
    assert set(actions_of(stmts["VpcNetworkInterfaces"])) == VPC_ENI_ACTIONS


def test_worker_role_is_least_privilege(tpl):
    stmts = {st["Sid"]: st for rid, st in iam_statements(tpl) if rid == "WorkerRole"}
    acts = {sid: sorted(st["Action"] if isinstance(st["Action"], list) else [st["Action"]]) for sid, st in stmts.items()}
    assert acts["JobQueues"] == sorted(["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                                        "sqs:GetQueueAttributes"])
    assert stmts["JobQueues"]["Resource"] == [{"Fn::GetAtt": ["ExpressQueue", "Arn"]}, {"Fn::GetAtt": ["BulkQueue", "Arn"]}]
    # The dead-letter queues (the sweep, and the operators' gpu-worker dlq run on a worker) and
    # the queues they redrive to: exactly the stage's three DLQs and the four queues that
    # dead-letter into them (test_dlq_tool_permissions).
    dlqs = [{"Fn::GetAtt": [q, "Arn"]} for q in ("ExpressDeadLetterQueue", "BulkDeadLetterQueue",
                                                 "UploadEventsDeadLetterQueue")]
    assert stmts["DeadLetterQueues"]["Resource"] == dlqs
    sources = [{"Fn::GetAtt": [q, "Arn"]} for q in ("ExpressQueue", "BulkQueue", *UPLOAD_EVENTS_QUEUES.values())]
    assert stmts["RedriveTargets"]["Resource"] == sources
    assert acts["RedriveTargets"] == sorted(["sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SendMessage"])
    # The pipeline requeues a newer version's message (SqsJobSource::requeue) to the job queues.
    sqs_rs = (ROOT / "functions" / "aws" / "src" / "sqs.rs").read_text()
    assert ".send_message()" in sqs_rs.split("impl JobSource for SqsJobSource", 1)[1].split("\nimpl ", 1)[0]
    assert {"Fn::GetAtt": ["ExpressQueue", "Arn"]} in sources and {"Fn::GetAtt": ["BulkQueue", "Arn"]} in sources
    assert set(acts["SessionManager"]) == SESSION_MANAGER_ACTIONS
    assert acts["ReadUploads"] == ["s3:GetObject"]
    assert stmts["ReadUploads"]["Resource"] == {"Fn::Sub": "${UploadBucket.Arn}/uploads/*"}
    assert acts["ReadArtifacts"] == ["s3:GetObject"]
    assert acts["Secrets"] == ["secretsmanager:GetSecretValue"]
    assert stmts["Secrets"]["Resource"] == [{"Ref": s} for s in ("DatabaseSecret", "ApiDatabaseSecret",
                                                                 "UploadDatabaseSecret", "WorkerDatabaseSecret",
                                                                 "WebhookSecret")]
    assert stmts["OwnMetrics"]["Condition"] == {"StringEquals": {"cloudwatch:namespace": "OcrFleet"}}
    assert acts["CompleteOwnLifecycleActions"] == ["autoscaling:CompleteLifecycleAction"]
    assert stmts["CompleteOwnLifecycleActions"]["Resource"]["Fn::Sub"].endswith(
        "autoScalingGroupName/ocr-${StageName}-workers")
    assert set(acts["WorkerLogs"]) <= {"logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"}
    assert acts["SignalStack"] == ["cloudformation:SignalResource"]
    # The crash-loop handler marks an instance of its own group, no other group's.
    assert acts["MarkOwnGroupUnhealthy"] == ["autoscaling:SetInstanceHealth"]
    assert stmts["MarkOwnGroupUnhealthy"]["Resource"] == stmts["CompleteOwnLifecycleActions"]["Resource"]
    assert set(stmts) == {"JobQueues", "DeadLetterQueues", "RedriveTargets", "ReadUploads", "ReadArtifacts",
                          "Secrets", "OwnMetrics", "CompleteOwnLifecycleActions", "MarkOwnGroupUnhealthy",
                          "WorkerLogs", "SignalStack", "SessionManager"}


# The SQS calls the dlq tool makes (functions/aws/src/sqs.rs, DeadLetterAdmin) -> IAM actions. A
# message-move task runs with its caller's permissions: receive and delete on the source (the
# DLQ), send on the destination.
SDK_TO_IAM = {"get_queue_url": "sqs:GetQueueUrl", "get_queue_attributes": "sqs:GetQueueAttributes",
              "receive_with": "sqs:ReceiveMessage", "change_visibility": "sqs:ChangeMessageVisibility",
              "start_message_move_task": "sqs:StartMessageMoveTask",
              "list_message_move_tasks": "sqs:ListMessageMoveTasks"}


def test_dlq_tool_permissions(tpl):
    sqs_rs = (ROOT / "functions" / "aws" / "src" / "sqs.rs").read_text()
    admin = sqs_rs.split("impl DeadLetterAdmin", 1)[1]
    called = {m for m in SDK_TO_IAM if re.search(rf"\.{m}\(", admin)}
    assert {"get_queue_url", "start_message_move_task", "list_message_move_tasks", "receive_with"} <= called, called
    needed_on_dlq = {SDK_TO_IAM[m] for m in called} | {"sqs:DeleteMessage"}  # the move task's
    stmts = {st["Sid"]: st for rid, st in iam_statements(tpl) if rid == "WorkerRole"}
    on_dlq = set(actions_of(stmts["DeadLetterQueues"]))
    assert needed_on_dlq <= on_dlq, needed_on_dlq - on_dlq
    assert on_dlq - needed_on_dlq == set(), "more than the tool and the sweep use"
    # Each DLQ's redrive targets are the queues that dead-letter into it (upload-events': both
    # priorities' queues; the tool moves each message back to the one it came from).
    res = tpl["Resources"]
    sources_of: dict[str, list[str]] = {}
    for q, r in res.items():
        if r["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in r["Properties"]:
            sources_of.setdefault(r["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0], []).append(q)
    dlqs = [r["Fn::GetAtt"][0] for r in stmts["DeadLetterQueues"]["Resource"]]
    targets = [r["Fn::GetAtt"][0] for r in stmts["RedriveTargets"]["Resource"]]
    assert sorted(dlqs) == sorted(sources_of)
    assert [q for d in dlqs for q in sources_of[d]] == targets
    assert sources_of["UploadEventsDeadLetterQueue"] == list(UPLOAD_EVENTS_QUEUES.values())
    # The tool finds them by name: ocr-<stage>-<queue>-dlq, the template's names.
    dlq_rs = (ROOT / "gpu-worker" / "worker" / "src" / "dlq.rs").read_text()
    assert 'format!("{prefix}-{}-dlq", queue.name())' in dlq_rs
    # A DLQ with one source names it; the shared one lets SQS send each message home.
    assert "(queue != Queue::UploadEvents).then(" in dlq_rs
    for d, q in zip(dlqs, ("express", "bulk", "upload-events")):
        assert res[d]["Properties"]["QueueName"]["Fn::If"][2]["Fn::Sub"] == "ocr-${StageName}-" + q + "-dlq"


def test_encryption_and_no_public_data(tpl):
    for rid, q in resources_of(tpl, "AWS::SQS::Queue").items():
        assert q["Properties"].get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in q["Properties"], rid
    (bucket,) = resources_of(tpl, "AWS::S3::Bucket").values()
    pab = bucket["Properties"]["PublicAccessBlockConfiguration"]
    assert all(pab[k] is True for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    assert bucket["Properties"]["BucketEncryption"]
    db = tpl["Resources"]["Database"]["Properties"]
    assert db["StorageEncrypted"] is True and db["PubliclyAccessible"] is False
    assert tpl["Resources"]["DatabaseProxy"]["Properties"]["RequireTLS"] is True
    lt = tpl["Resources"]["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert lt["MetadataOptions"]["HttpTokens"] == "required"
    assert all(b["Ebs"]["Encrypted"] is True for b in lt["BlockDeviceMappings"])
    assert tpl["Resources"]["AlarmTopic"]["Properties"]["KmsMasterKeyId"]
    assert "NetworkInterfaces" not in lt  # no public IPs


def test_secrets_are_generated_and_url_safe(tpl):
    for rid in ("DatabaseSecret", "ApiDatabaseSecret", "UploadDatabaseSecret", "WorkerDatabaseSecret"):
        db = tpl["Resources"][rid]["Properties"]["GenerateSecretString"]
        assert db["GenerateStringKey"] == "password" and db["ExcludePunctuation"] is True, rid
        assert json.loads(db["SecretStringTemplate"])["username"], rid
    assert tpl["Resources"]["WebhookSecret"]["Properties"]["GenerateSecretString"]["ExcludePunctuation"] is True
    assert "DatabaseSecretArn" not in tpl["Parameters"]


def test_mysql_reachable_only_from_functions_and_workers(tpl):
    ingress = resources_of(tpl, "AWS::EC2::SecurityGroupIngress")
    by_group: dict[str, set] = {}
    for r in ingress.values():
        p = r["Properties"]
        by_group.setdefault(p["GroupId"]["Ref"], set()).add((p["SourceSecurityGroupId"]["Ref"], p["FromPort"], p["ToPort"]))
    assert by_group["DatabaseSecurityGroup"] == {("ProxySecurityGroup", 3306, 3306)}
    assert by_group["ProxySecurityGroup"] == {("FunctionSecurityGroup", 3306, 3306), ("WorkerSecurityGroup", 3306, 3306)}
    assert by_group["WorkerSecurityGroup"] == {("MonitoringSecurityGroup", 9100, 9100)}
    for sg in ("DatabaseSecurityGroup", "ProxySecurityGroup", "WorkerSecurityGroup", "FunctionSecurityGroup"):
        assert "SecurityGroupIngress" not in tpl["Resources"][sg]["Properties"], sg
    # The database and the proxy live in the private subnets, not public.
    assert tpl["Resources"]["Database"]["Properties"]["DBSubnetGroupName"] == {"Ref": "DatabaseSubnetGroup"}


def test_network_endpoints(tpl):
    res = tpl["Resources"]
    s3 = res["S3GatewayEndpoint"]["Properties"]
    assert s3["VpcEndpointType"] == "Gateway" and s3["ServiceName"]["Fn::Sub"].endswith(".s3")
    services = {r["Properties"]["ServiceName"]["Fn::Sub"].rsplit(".", 1)[1]
                for r in resources_of(tpl, "AWS::EC2::VPCEndpoint").values()
                if r["Properties"]["VpcEndpointType"] == "Interface"}
    assert {"sqs", "monitoring", "logs", "secretsmanager", "autoscaling"} <= services
    # Session Manager to the workers without a NAT.
    assert {"ssm", "ssmmessages", "ec2messages"} <= services
    ready = json.dumps(res["NetworkReady"]["Metadata"])
    for rid, r in resources_of(tpl, "AWS::EC2::VPCEndpoint").items():
        assert f'"Ref": "{rid}"' in ready, f"workers do not wait for {rid}"
    assert res["NatGateway"]["Condition"] == "CreateNat"
    for fn in resources_of(tpl, "AWS::Serverless::Function"):
        assert "VpcConfig" in tpl["Globals"]["Function"], fn


# ------------------------------------------------------------------ workers
def test_worker_group(tpl, defaults):
    g = tpl["Resources"]["WorkerGroup"]
    p = g["Properties"]
    assert p["MinSize"] == {"Ref": "MinWorkers"} and p["MaxSize"] == {"Ref": "MaxWorkers"}
    assert "DesiredCapacity" not in p
    assert p["VPCZoneIdentifier"]["Fn::If"][1] == [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]
    subnets = [tpl["Resources"][s]["Properties"]["AvailabilityZone"] for s in ("PrivateSubnetA", "PrivateSubnetB")]
    assert subnets[0] != subnets[1]
    mip = p["MixedInstancesPolicy"]
    dist = mip["InstancesDistribution"]
    assert dist["OnDemandBaseCapacity"] == {"Ref": "OnDemandBaseWorkers"}
    assert "FindInMap" in json.dumps(dist["OnDemandPercentageAboveBaseCapacity"])
    assert p["MetricsCollection"] == [{"Granularity": "1Minute"}]
    hooks = {h["LifecycleTransition"]: h for h in p["LifecycleHookSpecificationList"]}
    assert set(hooks) == {"autoscaling:EC2_INSTANCE_TERMINATING", "autoscaling:EC2_INSTANCE_LAUNCHING"}
    assert g["CreationPolicy"]["ResourceSignal"]["Count"] == {"Ref": "MinWorkers"}
    assert g["UpdatePolicy"]["AutoScalingRollingUpdate"]["WaitOnResourceSignals"] is True
    tags = {t["Key"]: t["Value"] for t in p["Tags"]}
    assert tags["ocr-fleet:role"] == "worker"


def test_user_data_matches_group_hook_and_queues(tpl):
    env = stack_env(tpl)
    p = tpl["Resources"]["WorkerGroup"]["Properties"]
    assert env["AUTOSCALING_GROUP_NAME"] == p["AutoScalingGroupName"]["Fn::Sub"]
    hooks = {h["LifecycleTransition"]: h["LifecycleHookName"]["Fn::Sub"] for h in p["LifecycleHookSpecificationList"]}
    assert env["LIFECYCLE_HOOK_NAME"] == hooks["autoscaling:EC2_INSTANCE_TERMINATING"]
    assert env["LAUNCH_HOOK_NAME"] == hooks["autoscaling:EC2_INSTANCE_LAUNCHING"]
    assert env["CFN_LOGICAL_ID"] == "WorkerGroup"
    for q in ("ExpressQueue", "BulkQueue"):
        qp = tpl["Resources"][q]["Properties"]
        assert int(env["VISIBILITY_TIMEOUT_SECS"]) == qp["VisibilityTimeout"]
        assert int(env["MAX_ATTEMPTS"]) == qp["RedrivePolicy"]["maxReceiveCount"] == 3
    assert env["EXPRESS_QUEUE_URL"] == "${ExpressQueue}" and env["BULK_QUEUE_URL"] == "${BulkQueue}"
    # The DLQs the queues redrive to are the ones the dead-letter sweep reads.
    for q, var in (("ExpressQueue", "EXPRESS_DLQ_URL"), ("BulkQueue", "BULK_DLQ_URL")):
        dlq = tpl["Resources"][q]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        assert env[var] == "${" + dlq + "}"
    assert env["DB_HOST"] == "${DatabaseProxy.Endpoint}"


def test_lifecycle_hook_outlasts_the_drain(tpl):
    from worker_sandbox import bootstrap_constant
    grace = int(bootstrap_constant("SHUTDOWN_GRACE_SECS"))
    (hook,) = [h for h in tpl["Resources"]["WorkerGroup"]["Properties"]["LifecycleHookSpecificationList"]
               if h["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"]
    assert int(hook["HeartbeatTimeout"]) >= grace + 60


def test_only_serving_workers_count_as_capacity(tpl):
    """The backlog-per-worker policy divides by GroupInServiceInstances. A new worker enters service
    only through the launching hook, which its bootstrap completes (CONTINUE) once /healthz answers
    and abandons on failure; the hook's own timeout abandons a bootstrap that never reports."""
    g = tpl["Resources"]["WorkerGroup"]
    (hook,) = [h for h in g["Properties"]["LifecycleHookSpecificationList"]
               if h["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"]
    assert hook["DefaultResult"] == "ABANDON"
    text = BOOTSTRAP.read_text()
    health_wait = int(re.search(r'HEALTH_TIMEOUT_SECS="\$\{OCR_HEALTH_TIMEOUT_SECS:-(\d+)\}"', text).group(1))
    assert int(hook["HeartbeatTimeout"]) >= health_wait + 300  # + boot and downloads
    # ... and within the rolling update's wait for a new worker's signal.
    pause = g["UpdatePolicy"]["AutoScalingRollingUpdate"]["PauseTime"]
    assert int(hook["HeartbeatTimeout"]) <= int(re.fullmatch(r"PT(\d+)M", pause).group(1)) * 60
    metrics = tpl["Resources"]["BacklogPerWorkerPolicy"]["Properties"]["TargetTrackingConfiguration"][
        "CustomizedMetricSpecification"]["Metrics"]
    (workers,) = [m for m in metrics if m["Id"] == "workers"]
    assert workers["MetricStat"]["Metric"]["MetricName"] == "GroupInServiceInstances"


def test_user_data_is_valid_bash(tpl, tmp_path):
    import shutil
    import subprocess
    script = tmp_path / "user-data.sh"
    script.write_text(substitute(user_data(tpl)))
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-s", "bash", str(script)], check=True)


# ------------------------------------------------------------------ observability
def test_log_groups_have_retention(tpl):
    for rid, r in resources_of(tpl, "AWS::Logs::LogGroup").items():
        assert r["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, rid


def test_dlq_alarms(tpl):
    """Each DLQ has an alarm on *new* dead letters (DIFF of visible + hidden), not on "not empty",
    which stays in ALARM while a message waits for review and never notifies again."""
    alarms = resources_of(tpl, "AWS::CloudWatch::Alarm")
    dlqs = {k for k, r in resources_of(tpl, "AWS::SQS::Queue").items() if k.endswith("DeadLetterQueue")}
    watched = set()
    for a in alarms.values():
        p = a["Properties"]
        stats = {m["Id"]: m["MetricStat"]["Metric"] for m in p.get("Metrics", []) if "MetricStat" in m}
        queues = {d["Value"]["Fn::GetAtt"][0] for m in stats.values() for d in m["Dimensions"]}
        if not queues & dlqs:
            continue
        (queue,) = queues
        watched.add(queue)
        assert {m["MetricName"] for m in stats.values()} == {"ApproximateNumberOfMessagesVisible",
                                                             "ApproximateNumberOfMessagesNotVisible"}
        (out,) = [m for m in p["Metrics"] if m.get("ReturnData", True)]
        assert out["Expression"] == "DIFF(visible + hidden)"
        assert p["Threshold"] == 0 and p["ComparisonOperator"] == "GreaterThanThreshold"
        assert p["EvaluationPeriods"] == 1 and p["TreatMissingData"] == "notBreaching"
        assert p["AlarmActions"] == [{"Ref": "AlarmTopic"}] and p["OKActions"] == [{"Ref": "AlarmTopic"}]
    assert watched == dlqs


def dlq_alarm_states(counts: list[tuple[int, int]], new_only: bool) -> list[str]:
    """CloudWatch's state per minute for a DLQ whose (visible, hidden) maxima are `counts`: the
    template's alarm (`new_only`: DIFF(visible + hidden) > 0) or the old one (visible > 0)."""
    states, previous = [], None
    for visible, hidden in counts:
        total = visible + hidden
        if new_only:
            value = None if previous is None else total - previous  # DIFF has no first point
            previous = total
            states.append("OK" if value is None or value <= 0 else "ALARM")
        else:
            states.append("ALARM" if visible > 0 else "OK")
    return states


def test_dlq_alarm_notifies_each_new_dead_letter():
    # Minute by minute: empty; one dead letter; it stays (the sweep hides it half the time); a
    # second one a while later; an operator redrives both.
    counts = [(0, 0), (1, 0), (0, 1), (1, 0), (0, 1), (1, 0), (2, 0), (1, 1), (2, 0), (0, 0)]
    new = dlq_alarm_states(counts, new_only=True)
    assert new == ["OK", "ALARM", "OK", "OK", "OK", "OK", "ALARM", "OK", "OK", "OK"]
    transitions = lambda s: sum(1 for a, b in zip(s, s[1:]) if a == "OK" and b == "ALARM")  # noqa: E731
    assert transitions(new) == 2, "one notification per new dead letter"
    old = dlq_alarm_states(counts, new_only=False)
    # The old alarm: the sweep's hiding flapped it, and it never told of the second dead letter.
    assert old[6] == "ALARM" and old[5] == "ALARM", "no OK->ALARM when the second one came"


def test_dashboard(tpl):
    body = tpl["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    dash = json.loads(substitute(body, {"ScaleOutQueueDepth": "720", "ExpressMaxAgeSecs": "300",
                                        "MaxWorkers": "4", "BacklogPerWorkerTarget": "360"}))
    text = json.dumps(dash)
    for metric in ("ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage", "JobsPerSecond",
                   "JobsFailed", "QueueToResultLatency", "GroupInServiceInstances", "GroupDesiredCapacity"):
        assert metric in text, metric
    from conftest import CLOUDWATCH_RS
    published = set(re.findall(r'metric_name\("([A-Za-z]+)"\)', CLOUDWATCH_RS.read_text()))
    used = {m[1] for w in dash["widgets"] for m in w["properties"]["metrics"] if m and m[0] == "OcrFleet"}
    assert used and used <= published, (used, published)
    assert '"Fleet", "${StageName}"' in body  # the worker's FLEET_NAME is the stage


def test_outputs(tpl):
    for key in ("ApiUrl", "BucketName", "ExpressQueueUrl", "BulkQueueUrl", "DashboardUrl",
                "ExpressDeadLetterQueueUrl", "BulkDeadLetterQueueUrl", "WorkerGroupName"):
        assert key in tpl["Outputs"], key


@pytest.mark.parametrize("rid", ["ApiFunction", "OnUploadFunction"])
def test_functions_keep_their_build(tpl, rid):
    r = tpl["Resources"][rid]
    assert r["Metadata"]["BuildMethod"] == "rust-cargolambda"
    assert resolve(r["Properties"]["CodeUri"], {}) == "./functions/api"


def test_checkov_skips_carry_reasons(tpl):
    skips = 0
    for rid, r in tpl["Resources"].items():
        for s in r.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV2?_AWS_\d+", s["id"]), (rid, s)
            assert len(s.get("comment", "").split()) >= 5, f"{rid}: skip {s['id']} needs a written reason"
            skips += 1
    assert skips


# ------------------------------------------------------------------ authentication
# The only routes any caller may reach without a token: liveness and the API's own description.
PUBLIC_ROUTES = {("GET", "/healthz"), ("GET", "/v1/openapi.json")}


def test_every_route_but_health_and_openapi_needs_the_jwt(tpl, transformed):
    """AUTH_MODE=jwt trusts the claims API Gateway's JWT authorizer puts in the request: a route
    without the authorizer would reach the function with no claims (401 there, but only because
    the code holds), or, worse, with a route someone adds later that skips it."""
    api = tpl["Resources"]["HttpApi"]["Properties"]
    assert api["Auth"]["DefaultAuthorizer"] == "JwtAuthorizer"
    jwt = api["Auth"]["Authorizers"]["JwtAuthorizer"]
    assert jwt["IdentitySource"] == "$request.header.Authorization"
    assert set(jwt["JwtConfiguration"]) == {"issuer", "audience"}, jwt
    assert "DefinitionBody" not in api and "DefinitionUri" not in api, "routes come only from function events"
    seen = set()
    for name, fn in resources_of(tpl, "AWS::Serverless::Function").items():
        for event_name, event in fn["Properties"].get("Events", {}).items():
            if event["Type"] != "HttpApi":
                continue
            props = event["Properties"]
            route = (props["Method"].upper(), props["Path"])
            seen.add(route)
            authorizer = props.get("Auth", {}).get("Authorizer", "JwtAuthorizer")
            if route in PUBLIC_ROUTES:
                assert authorizer == "NONE", f"{name}.{event_name}: {route} is public on purpose"
            else:
                assert authorizer == "JwtAuthorizer", f"{name}.{event_name}: {route} must need the JWT"
    assert PUBLIC_ROUTES <= seen and ("ANY", "/v1/{proxy+}") in seen, seen
    # After SAM's transform (an OpenAPI body on the HTTP API): the same, operation by operation.
    body = transformed["Resources"]["HttpApi"]["Properties"]["Body"]
    scheme = body["components"]["securitySchemes"]["JwtAuthorizer"]["x-amazon-apigateway-authorizer"]
    assert scheme["type"] == "jwt" and scheme["identitySource"] == "$request.header.Authorization"
    ops = 0
    for path, methods in body["paths"].items():
        for method, op in methods.items():
            method = "ANY" if method == "x-amazon-apigateway-any-method" else method.upper()
            want = [{"NONE": []}] if (method, path) in PUBLIC_ROUTES else [{"JwtAuthorizer": []}]
            assert op.get("security") == want, (method, path, op.get("security"))
            ops += 1
    assert ops == len(seen)


def test_functions_run_in_jwt_mode(tpl):
    env = tpl["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert env["AUTH_MODE"] == "jwt" and "API_TOKENS" not in env


def test_the_upload_events_dlq_is_swept_on_a_schedule(tpl, transformed):
    fn = tpl["Resources"]["OnUploadFunction"]["Properties"]
    env = fn["Environment"]["Variables"]
    assert env["UPLOAD_EVENTS_DLQ_URL"] == {"Ref": "UploadEventsDeadLetterQueue"}
    sweep = fn["Events"]["UploadEventsSweep"]
    assert sweep["Type"] == "Schedule"
    assert json.loads(sweep["Properties"]["Input"]) == {"sweep": "upload-events-dlq"}
    # Six backed-off receives span the half hour the README promises before the DLQ.
    base, top = int(env["UPLOAD_RETRY_BASE_SECS"]), int(env["UPLOAD_RETRY_MAX_SECS"])
    (receives,) = {tpl["Resources"][q]["Properties"]["RedrivePolicy"]["maxReceiveCount"]
                   for q in UPLOAD_EVENTS_QUEUES.values()}
    assert receives == 6
    assert sum(min(base * 2 ** n, top) for n in range(receives)) == 1830
    rules = [r for r in transformed["Resources"].values() if r["Type"] == "AWS::Events::Rule"]
    assert len(rules) == 1 and rules[0]["Properties"]["ScheduleExpression"] == "rate(5 minutes)"
    # Each database step of a function gives up well inside the functions' 10 s timeout.
    assert int(tpl["Globals"]["Function"]["Environment"]["Variables"]["DB_TIMEOUT_MS"]) * 3 < 10_000


def test_the_database_is_the_engine_the_tests_run_on(tpl):
    # Every store test, chaos run and local pipeline runs on MariaDB; RDS for MySQL 8.4 differs
    # in collations, locking and SQL modes. RDS Proxy's MYSQL family fronts MariaDB too.
    db = tpl["Resources"]["Database"]["Properties"]
    assert db["Engine"] == "mariadb"
    assert tpl["Parameters"]["DatabaseEngineVersion"]["AllowedValues"] == ["10.11", "11.4"]
    assert tpl["Resources"]["DatabaseProxy"]["Properties"]["EngineFamily"] == "MYSQL"


# ------------------------------------------------------------------ express events never wait
def test_each_priority_has_its_own_upload_events_queue_and_mapping(tpl, transformed, defaults):
    """Issue 15: an express upload's event never waits behind a bulk backlog. The bucket sends
    uploads/express/ and uploads/bulk/ each to its own queue (both dead-lettering into the one
    upload-events DLQ, which the sweep and its alarm watch), and on-upload reads each with its own
    mapping and cap: express one event at a time with no batching window, bulk capped so that a
    flood never takes the function's whole concurrency."""
    res = tpl["Resources"]
    (bucket,) = resources_of(tpl, "AWS::S3::Bucket").values()
    notified = {}
    for q in bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]:
        assert q["Event"] == "s3:ObjectCreated:*"
        (rule,) = q["Filter"]["S3Key"]["Rules"]
        assert rule["Name"] == "prefix"
        notified[rule["Value"]] = q["Queue"]
    assert notified == {f"uploads/{p}/": {"Fn::GetAtt": [q, "Arn"]} for p, q in UPLOAD_EVENTS_QUEUES.items()}
    # The keys the API writes: uploads/<priority>/<job id>, priority one of these two.
    job_rs = (ROOT / "functions" / "core" / "src" / "job.rs").read_text()
    assert 'Priority::Express => "express"' in job_rs and 'Priority::Bulk => "bulk"' in job_rs
    assert 'pub const UPLOAD_PREFIX: &str = "uploads/";' in job_rs
    assert 'format!("{UPLOAD_PREFIX}{priority}/{id}")' in job_rs

    # Named like the rest, sharing the one DLQ; S3 may send to both (and only from the bucket).
    for p, q in UPLOAD_EVENTS_QUEUES.items():
        props = res[q]["Properties"]
        assert props["QueueName"]["Fn::If"][1] == f"ocr-upload-events-{p}"
        assert props["QueueName"]["Fn::If"][2] == {"Fn::Sub": f"ocr-${{StageName}}-upload-events-{p}"}
        assert props["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["UploadEventsDeadLetterQueue", "Arn"]}
        assert props["VisibilityTimeout"] >= 6 * tpl["Globals"]["Function"]["Timeout"]
    policy = res["UploadEventsQueuePolicy"]["Properties"]
    assert policy["Queues"] == [{"Ref": q} for q in UPLOAD_EVENTS_QUEUES.values()]
    (st,) = policy["PolicyDocument"]["Statement"]
    assert st["Resource"] == [{"Fn::GetAtt": [q, "Arn"]} for q in UPLOAD_EVENTS_QUEUES.values()]
    assert res["UploadBucket"]["DependsOn"] == "UploadEventsQueuePolicy"
    # The functions get both URLs, under the names the code reads.
    env = tpl["Globals"]["Function"]["Environment"]["Variables"]
    assert env["UPLOAD_EVENTS_EXPRESS_QUEUE_URL"] == {"Ref": "UploadEventsExpressQueue"}
    assert env["UPLOAD_EVENTS_BULK_QUEUE_URL"] == {"Ref": "UploadEventsBulkQueue"}
    assert "UPLOAD_EVENTS_QUEUE_URL" not in json.dumps(tpl)
    config_rs = (ROOT / "functions" / "api" / "src" / "config.rs").read_text()
    for name in ("UPLOAD_EVENTS_EXPRESS_QUEUE_URL", "UPLOAD_EVENTS_BULK_QUEUE_URL"):
        assert f'env = "{name}"' in config_rs, name

    # One mapping per queue, each with its own cap.
    events = res["OnUploadFunction"]["Properties"]["Events"]
    sqs = {k: e["Properties"] for k, e in events.items() if e["Type"] == "SQS"}
    by_queue = {e["Queue"]["Fn::GetAtt"][0]: e for e in sqs.values()}
    assert set(by_queue) == set(UPLOAD_EVENTS_QUEUES.values()) and len(sqs) == 2
    express, bulk = by_queue["UploadEventsExpressQueue"], by_queue["UploadEventsBulkQueue"]
    for e in (express, bulk):
        assert e["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert e.get("MaximumBatchingWindowInSeconds", 0) == 0
    # Express: one event per invocation, so none waits for another's checks.
    assert express["BatchSize"] == 1
    assert express["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "OnUploadExpressMaxConcurrency"}}
    assert 1 <= bulk["BatchSize"] <= 10
    assert bulk["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "OnUploadBulkMaxConcurrency"}}
    # Without a reservation the two caps are separate pools: bulk at its cap leaves express all of
    # its own (a reservation below their sum would let a bulk flood throttle express).
    assert "ReservedConcurrentExecutions" not in res["OnUploadFunction"]["Properties"]
    assert int(defaults["OnUploadExpressMaxConcurrency"]) >= 2
    # The same after the SAM transform: two mappings on the alias, with the same settings.
    mappings = {m["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]: m["Properties"]
                for m in resources_of(transformed, "AWS::Lambda::EventSourceMapping").values()}
    assert set(mappings) == set(UPLOAD_EVENTS_QUEUES.values())
    assert mappings["UploadEventsExpressQueue"]["BatchSize"] == 1
    assert mappings["UploadEventsExpressQueue"]["ScalingConfig"] == express["ScalingConfig"]
    assert mappings["UploadEventsBulkQueue"]["ScalingConfig"] == bulk["ScalingConfig"]
    # deploy.sh checks the account's unreserved concurrency against both caps.
    deploy = (ROOT / "scripts" / "deploy.sh").read_text()
    assert "param OnUploadExpressMaxConcurrency" in deploy and "param OnUploadBulkMaxConcurrency" in deploy
