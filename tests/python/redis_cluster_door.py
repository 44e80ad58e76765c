"""A plain redis-py client given one node's address: writes and reads back every key
named on the command line after HOST PORT, whichever node owns it, and lists and counts
them all (SCAN and DBSIZE walk every node's shards). Run by tests/tests/resp_python.rs."""

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
stored = {name.encode() for key in KEYS for name in (key, f"{key}:count", f"{key}:list")}
assert r.dbsize() == len(stored), r.dbsize()
listed = list(r.scan_iter(count=3))
assert set(listed) == stored, stored ^ set(listed)
assert set(r.scan_iter(match="*:count")) == {f"{key}:count".encode() for key in KEYS}
for key in KEYS:
    r.delete(f"{key}:count", f"{key}:list")
assert r.delete(*KEYS) == len(KEYS)
print(f"ok {len(KEYS)} keys through one door")
