#!/usr/bin/env python3
"""Writes the two raw gRPC request frames the h2load benchmarks send, into
the directory given: check_origin.bin (an allowed actual request from
https://a.partner.example.net against examples/policy.toml) and health.bin
(an empty HealthCheckRequest). A frame is a 0 byte (not compressed), a
4-byte length and the message."""
import struct
import sys


def field(tag, value):
    data = value.encode()
    assert len(data) < 128, "one-byte lengths only"
    return bytes([tag << 3 | 2, len(data)]) + data


check_origin = (field(1, "https://a.partner.example.net") + field(2, "GET")
                + field(5, "https") + field(6, "api.example.com")
                + field(7, "/services/data/v60.0/query"))
health = b""  # HealthCheckRequest { service: "" }
for name, message in (("check_origin", check_origin), ("health", health)):
    with open(f"{sys.argv[1]}/{name}.bin", "wb") as out:
        out.write(b"\0" + struct.pack(">I", len(message)) + message)
