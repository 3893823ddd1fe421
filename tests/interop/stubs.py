"""What the interop clients share: corsd's stubs compiled by the stock protoc
(grpcio-tools) into OUT_DIR, and a check that prints one line and exits
non-zero on a failure."""
import os
import subprocess
import sys


def compile_stubs(out):
    """Compiles proto/corsd/v1/corsd.proto into `out` and returns (pb, rpc)."""
    proto_dir = os.path.join(os.path.dirname(__file__), "..", "..", "proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out}",
         f"--grpc_python_out={out}", "corsd/v1/corsd.proto"],
        check=True,
    )
    sys.path.insert(0, out)
    from corsd.v1 import corsd_pb2, corsd_pb2_grpc
    return corsd_pb2, corsd_pb2_grpc


def check(what, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + what + (f": {detail}" if detail and not ok else ""))
    if not ok:
        sys.exit(1)
