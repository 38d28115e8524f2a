"""Starts LocalStack in host mode (scripts/lib/localstack.sh) with one change to its S3 emulation:
event notifications are dispatched per destination instead of through one shared queue.

LocalStack hands every S3 event notification, whatever its destination, to one FIFO executor of
three threads, each sending one message at a time through LocalStack's own HTTP gateway. Under a
flood of uploads that executor falls behind, and a notification for the express upload-events
queue waits behind every bulk one queued before it: `scripts/bench.sh latency` measured 59 s
(p50) from an express PUT to its event being on the queue, during a 5,000-upload bulk flood,
with LocalStack using 0.89 of a core (its GIL). S3 delivers the notifications of a bucket's
configurations independently, and does not hold one destination's behind another's backlog, so
each destination (queue, topic or function) gets its own executor here, as many threads as
LocalStack gives the shared one. Nothing else changes: the same notifier code sends the same
message."""

import runpy
import threading
from concurrent.futures import ThreadPoolExecutor

from localstack.services.s3.notifications import NotificationDispatcher

THREADS = 3
_executors: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def _submit_per_destination(self, notifier, ctx, config):
    dest = (config.get("QueueArn") or config.get("TopicArn") or config.get("LambdaFunctionArn")
            or "eventbridge")
    with _lock:
        executor = _executors.get(dest)
        if executor is None:
            executor = _executors[dest] = ThreadPoolExecutor(THREADS, thread_name_prefix="s3_ev")
    executor.submit(notifier.notify, ctx, config)


def _shutdown(self):
    with _lock:
        for executor in _executors.values():
            executor.shutdown(wait=False)
    self.executor.shutdown(wait=False)


NotificationDispatcher._submit_notification = _submit_per_destination
NotificationDispatcher.shutdown = _shutdown

if __name__ == "__main__":
    runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
