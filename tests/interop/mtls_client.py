"""corsd over mTLS from another language: Python grpcio (BoringSSL), its
stubs from the stock protoc. Run by tests/it/interop.rs against a real
`corsd serve` with the certificates of scripts/make-test-ca; prints one line
per check and exits non-zero on the first failure.

usage: mtls_client.py ADDR PKI_DIR OUT_DIR
"""
import os
import sys

import grpc

from stubs import check, compile_stubs

addr, pki, out = sys.argv[1], sys.argv[2], sys.argv[3]
pb, rpc = compile_stubs(out)


def read(name):
    with open(os.path.join(pki, name), "rb") as f:
        return f.read()


def stub(identity):
    key, chain = (read(identity + ".key"), read(identity + ".crt")) if identity else (None, None)
    credentials = grpc.ssl_channel_credentials(read("ca.crt"), key, chain)
    channel = grpc.secure_channel(addr, credentials, options=[("grpc.ssl_target_name_override", "corsd.internal")])
    return rpc.CorsPolicyStub(channel)


def code(call):
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


request = pb.CheckOriginRequest(origin="https://app.example.org", method="GET")
envoy = stub("envoy")
r = envoy.CheckOrigin(request, timeout=5)
check("allowed over mTLS", (r.verdict, r.reason) == (pb.VERDICT_ALLOW, pb.REASON_ALLOWED), r)
r = envoy.CheckOrigin(pb.CheckOriginRequest(origin="https://evil.example", method="GET"), timeout=5)
check("denied over mTLS", (r.reason, r.respond_status) == (pb.REASON_ORIGIN_NOT_ALLOWED, 403), r)
got = code(lambda: envoy.ListEntries(pb.ListEntriesRequest(), timeout=5))
check("ListEntries refused without the admin SAN", got == grpc.StatusCode.PERMISSION_DENIED, got)
admin = stub("admin")
listed = admin.ListEntries(pb.ListEntriesRequest(), timeout=5)
check("ListEntries with the admin SAN", listed.total_size == 1, listed)
got = code(lambda: stub(None).CheckOrigin(request, timeout=5))
check("no client certificate refused", got == grpc.StatusCode.UNAVAILABLE, got)
