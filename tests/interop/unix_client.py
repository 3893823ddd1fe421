"""corsd over a Unix socket from grpcio (gRPC C-core), as a sidecar's
client: with the channel option grpc.default_authority set to "localhost"
the call is answered; without it C-core sends the percent-encoded socket
path as :authority, which the HTTP/2 layer under corsd refuses (DESIGN.md
section 10). Run by tests/it/interop.rs against a real `corsd serve --listen
unix:PATH`; prints one line per check and exits non-zero on the first
failure.

usage: unix_client.py SOCKET_PATH OUT_DIR
"""
import sys

import grpc

from stubs import check, compile_stubs

socket, out = sys.argv[1], sys.argv[2]
pb, rpc = compile_stubs(out)
request = pb.CheckOriginRequest(origin="https://app.example.org", method="GET")

with grpc.insecure_channel(f"unix:{socket}", options=[("grpc.default_authority", "localhost")]) as channel:
    answer = rpc.CorsPolicyStub(channel).CheckOrigin(request, timeout=10)
    check("CheckOrigin over the socket with grpc.default_authority", answer.reason == pb.REASON_ALLOWED, str(answer))

with grpc.insecure_channel(f"unix:{socket}") as channel:
    try:
        rpc.CorsPolicyStub(channel).CheckOrigin(request, timeout=10)
        refused = None
    except grpc.RpcError as e:
        refused = e.code()
    check("without it, the socket path as :authority is refused", refused is not None, str(refused))
