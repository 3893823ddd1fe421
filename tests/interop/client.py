"""corsd's gRPC API from another language: Python, with the proto compiled by
the stock protoc (grpcio-tools). Run by tests/it/interop.rs against a real
server; prints one line per check and exits non-zero on the first failure.

usage: client.py ADDR POLICY_FILE OUT_DIR
"""
import sys
import time

import grpc

from stubs import check, compile_stubs

addr, policy_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
pb, rpc = compile_stubs(out)


stub = rpc.CorsPolicyStub(grpc.insecure_channel(addr))

r = stub.CheckOrigin(pb.CheckOriginRequest(
    origin="https://a.partner.example.net", method="OPTIONS", access_control_request_method="PUT",
    access_control_request_headers=["Authorization, X-Requested-With"], scheme="https",
    authority="api.example.com", path="/services/data/v60.0"))
check("allowed preflight", (r.verdict, r.reason, r.preflight, r.respond_status) ==
      (pb.VERDICT_ALLOW, pb.REASON_ALLOWED, True, 204), r)
check("matched pattern", r.matched_pattern == "https://*.partner.example.net", r.matched_pattern)
headers = {h.name: h.value for h in r.response_headers}
check("allow-origin echoed", headers.get("access-control-allow-origin") == "https://a.partner.example.net", headers)

r = stub.CheckOrigin(pb.CheckOriginRequest(method="GET", authority="api.example.com", path="/services/data"))
check("absent origin is no origin", (r.verdict, r.reason) == (pb.VERDICT_NOT_CORS, pb.REASON_NO_ORIGIN), r)
r = stub.CheckOrigin(pb.CheckOriginRequest(origin="", method="GET"))
check("empty origin is malformed", (r.verdict, r.reason) == (pb.VERDICT_DENY, pb.REASON_ORIGIN_MALFORMED), r)
r = stub.CheckOrigin(pb.CheckOriginRequest(origin="null", method="GET"))
check("null origin", (r.reason, r.respond_status) == (pb.REASON_ORIGIN_NULL, 403), r)

first = stub.ListEntries(pb.ListEntriesRequest(page_size=2))
check("first page", len(first.entries) == 2 and first.next_page_token != "" and first.total_size == 3, first)
check("policy info", first.policy.label == "interop" and first.policy.entry_count == 3
      and first.policy.last_reload_error == "", first.policy)
rest = stub.ListEntries(pb.ListEntriesRequest(page_size=2, page_token=first.next_page_token))
check("last page", len(rest.entries) == 1 and rest.next_page_token == "", rest)
check("file order", [e.pattern for e in list(first.entries) + list(rest.entries)] ==
      ["https://app.example.org", "https://*.partner.example.net", "http://localhost:3000"])

with open(policy_path, "a") as f:
    f.write('[[entries]]\norigin = "https://new.example.org"\n')
deadline = time.time() + 1.0
while stub.ListEntries(pb.ListEntriesRequest()).policy.entry_count != 4:
    if time.time() > deadline:
        check("reload within 1 s", False)
    time.sleep(0.02)
check("reload within 1 s", True)
try:
    stub.ListEntries(pb.ListEntriesRequest(page_token=first.next_page_token))
    check("stale token aborted", False)
except grpc.RpcError as e:
    check("stale token aborted", e.code() == grpc.StatusCode.ABORTED, e)

with open(policy_path, "w") as f:
    f.write('[[entries]]\norigin = "https://example.com/"\n')
deadline = time.time() + 1.0
while True:
    info = stub.ListEntries(pb.ListEntriesRequest()).policy
    if info.last_reload_error:
        break
    if time.time() > deadline:
        check("bad file reported within 1 s", False)
    time.sleep(0.02)
check("bad file reported within 1 s", True)
check("last good policy kept", info.entry_count == 4, info)
check("error has its position", ":2:10: invalid origin" in info.last_reload_error, info.last_reload_error)
