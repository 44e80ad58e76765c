"""A plain redis-py client given one node's address: writes and reads back every key
named on the command line after HOST PORT, whichever node owns it. Run by
tests/tests/resp_python.rs."""

import sys

import redis

HOST, PORT, KEYS = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

r = redis.Redis(host=HOST, port=PORT, socket_timeout=20)
for key in KEYS:
    assert r.set(key, f"value of {key}") is True, key
    assert r.incr(f"{key}:count") == 1, key
    assert r.rpush(f"{key}:list", "a", "b") == 2, key
for key in KEYS:
    assert r.get(key) == f"value of {key}".encode(), key
    assert r.lpop(f"{key}:list") == b"a", key
assert r.mget(KEYS) == [f"value of {key}".encode() for key in KEYS]
assert r.delete(*KEYS) == len(KEYS)
print(f"ok {len(KEYS)} keys through one door")
