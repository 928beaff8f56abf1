#!/usr/bin/python3
"""Interoperability from another language: a Python client generated from
proto/asyncd/v1/asyncd.proto with Debian's grpc_python_plugin submits,
lists and cancels against the real daemon.

Usage: python_interop_test.py ASYNCD_BINARY GENERATED_PYTHON_DIR
"""
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, sys.argv[2])
import grpc  # noqa: E402
from asyncd.v1 import asyncd_pb2 as pb  # noqa: E402
from asyncd.v1 import asyncd_pb2_grpc as rpc  # noqa: E402


def main():
    with tempfile.TemporaryDirectory(prefix="asyncd-py.") as tmp:
        sock = os.path.join(tmp, "asyncd.sock")
        root = os.path.join(tmp, "root")
        os.makedirs(root)
        env = dict(os.environ, STATE_DIRECTORY=os.path.join(tmp, "state"))
        daemon = subprocess.Popen([sys.argv[1], "--socket", sock, "--root", root,
                                   "--log-level", "warn"], env=env)
        try:
            run(sock, root)
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0, "daemon did not stop cleanly"
    print("1 passed, 0 failed")


def run(sock, root):
    channel = grpc.insecure_channel("unix:" + sock)
    grpc.channel_ready_future(channel).result(timeout=20)
    stub = rpc.AsyncdStub(channel)

    session = stub.OpenSession(pb.OpenSessionRequest(client_name="python")).session_id
    nop = stub.Submit(pb.SubmitRequest(session_id=session, op=pb.Operation(tag=1, nop=pb.Nop())))
    assert nop.outcome == pb.OUTCOME_COMPLETED and nop.tag == 1, nop

    opened = stub.Submit(pb.SubmitRequest(session_id=session, op=pb.Operation(
        open=pb.Open(path="hello.txt", access=pb.OPEN_MODE_READ_WRITE, create=True))))
    assert opened.outcome == pb.OUTCOME_COMPLETED and opened.handle != 0, opened
    wrote = stub.Submit(pb.SubmitRequest(session_id=session, op=pb.Operation(
        write=pb.Write(handle=opened.handle, offset=0, data=b"from python"))))
    assert wrote.result == 11, wrote
    with open(os.path.join(root, "hello.txt"), "rb") as f:
        assert f.read() == b"from python"

    # A read that blocks on a FIFO, listed and cancelled from Python.
    os.mkfifo(os.path.join(root, "fifo"))
    fifo = stub.Submit(pb.SubmitRequest(session_id=session, op=pb.Operation(
        open=pb.Open(path="fifo", access=pb.OPEN_MODE_READ_WRITE)))).handle
    result = {}

    def blocked_read():
        result["c"] = stub.Submit(pb.SubmitRequest(session_id=session, op=pb.Operation(
            tag=7, read=pb.Read(handle=fifo, offset=-1, length=8))))

    reader = threading.Thread(target=blocked_read)
    reader.start()
    op = None
    for _ in range(500):
        # The FIFO's open may still be listed (completed, not yet retired).
        ops = [o for o in stub.ListOperations(pb.ListOperationsRequest()).ops
               if o.kind == pb.OP_KIND_READ]
        if ops:
            op = ops[0]
            break
        time.sleep(0.01)
    assert op is not None and op.kind == pb.OP_KIND_READ and op.cancellable, op
    answer = stub.Cancel(pb.CancelRequest(op_id=op.op_id))
    assert answer.outcomes[0].result == pb.CANCEL_RESULT_CANCELLED, answer
    reader.join(timeout=10)
    assert result["c"].outcome == pb.OUTCOME_CANCELLED and result["c"].tag == 7, result

    # Errors carry gRPC codes.
    try:
        stub.Submit(pb.SubmitRequest(session_id=session, op=pb.Operation(
            read=pb.Read(handle=4242, offset=0, length=1))))
        raise AssertionError("unknown handle accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e

    # The batched stream works too.
    def requests():
        yield pb.StreamRequest(open=pb.StreamOpen(client_name="python-stream"))
        yield pb.StreamRequest(submit=pb.SubmitBatch(
            batch_tag=3, ops=[pb.Operation(tag=i, nop=pb.Nop()) for i in range(100)]))
    seen = set()
    for msg in stub.Stream(requests()):
        if msg.HasField("completions"):
            seen.update(c.tag for c in msg.completions.completions
                        if c.outcome == pb.OUTCOME_COMPLETED)
    assert seen == set(range(100)), sorted(seen)
    stub.CloseSession(pb.CloseSessionRequest(session_id=session))


if __name__ == "__main__":
    main()
