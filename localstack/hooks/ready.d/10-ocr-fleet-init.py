# LocalStack ready hook (Docker only, see localstack/docker-compose.yml).
# LocalStack exec()s this file in its own Python, which has boto3; it runs the same
# localstack/init.py that scripts/localstack.sh users run by hand.
import runpy
import sys

_argv = sys.argv
sys.argv = ["init.py", "--stage", "local"]
try:
    runpy.run_path("/opt/ocr-fleet/init.py", run_name="__main__")
except SystemExit as e:
    if e.code not in (0, None):
        raise
finally:
    sys.argv = _argv
