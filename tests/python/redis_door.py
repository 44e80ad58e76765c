"""Engram's Redis-protocol door as redis-py sees it.

Run by tests/tests/resp_python.rs against a real engramd: `python redis_door.py HOST PORT
SCRATCH_DIR`. Exits non-zero (an AssertionError with its line) on the first difference.
"""

import multiprocessing
import os
import pty
import select
import subprocess
import sys
import threading
import time

import redis

HOST, PORT, SCRATCH = sys.argv[1], int(sys.argv[2]), sys.argv[3]
LOCKERS = 8
ROUNDS_PER_LOCKER = 5


def client(**options):
    return redis.Redis(host=HOST, port=PORT, socket_timeout=20, **options)


def strings(r):
    assert r.ping() is True
    assert r.echo("hi") == b"hi"
    assert r.set("s", "Hello World") is True
    assert r.get("s") == b"Hello World"
    assert r.set("s", "other", nx=True) is None
    assert r.setnx("s", "other") is False
    assert r.setrange("s", 6, "Redis") == 11
    assert r.getrange("s", 0, 4) == b"Hello"
    assert r.append("s", "!") == 12
    assert r.strlen("s") == 12
    assert r.set("t", "v", ex=100) is True
    assert 99 <= r.ttl("t") <= 100
    assert r.set("p", "v", px=100_000) is True
    assert 99_000 <= r.pttl("p") <= 100_000
    assert r.setex("e", 100, "v") is True and r.get("e") == b"v"
    assert r.psetex("pe", 100_000, "v") is True
    assert r.incr("n") == 1
    assert r.incrby("n", 10) == 11
    assert r.decr("n") == 10
    assert r.decrby("n", 20) == -10
    assert r.get("n") == b"-10"
    try:
        r.incr("s")
        raise AssertionError("INCR of a non-integer must fail")
    except redis.ResponseError as error:
        assert "not an integer" in str(error)
    assert r.set("x", "1", xx=True) is None
    assert r.set("x", "1") is True and r.set("x", "2", xx=True) is True
    assert r.set("x", "3", get=True) == b"2"
    assert r.getset("x", "4") == b"3"
    assert r.expire("x", 100) is True
    assert r.set("x", "5", keepttl=True) is True and 90 <= r.ttl("x") <= 100
    assert r.getdel("x") == b"5" and r.getdel("x") is None
    assert r.mset({"m1": "a", "m2": "b"}) is True
    assert r.mget("m1", "m2", "absent") == [b"a", b"b", None]


def keys(r):
    assert r.exists("s", "m1", "absent") == 2
    assert r.type("s") == b"string"
    assert r.type("absent") == b"none"
    assert r.ttl("s") == -1
    assert r.ttl("absent") == -2
    assert r.expire("s", 100) is True
    assert r.persist("s") is True
    assert r.pexpire("m1", 100_000) is True
    assert r.expireat("m2", int(time.time()) + 100) is True
    assert 90 <= r.ttl("m2") <= 100
    assert r.delete("m1", "m2", "absent") == 2
    assert r.unlink("e") == 1
    assert r.expire("absent", 10) is False
    r.set("gone", "v")
    assert r.pexpire("gone", 1) is True
    time.sleep(0.05)
    assert r.get("gone") is None


def hashes(r):
    assert r.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert r.hset("h", "a", "3") == 0
    assert r.hget("h", "a") == b"3"
    assert r.hmget("h", "a", "b", "c") == [b"3", b"2", None]
    assert r.hgetall("h") == {b"a": b"3", b"b": b"2"}
    assert r.hlen("h") == 2
    assert r.hexists("h", "b") is True and r.hexists("h", "z") is False
    assert sorted(r.hkeys("h")) == [b"a", b"b"]
    assert sorted(r.hvals("h")) == [b"2", b"3"]
    assert r.hincrby("h", "n", 5) == 5
    assert r.hdel("h", "a", "z") == 1
    assert r.type("h") == b"hash"
    try:
        r.get("h")
        raise AssertionError("GET of a hash must fail")
    except redis.ResponseError as error:
        assert str(error).startswith("WRONGTYPE"), str(error)


def lists(r):
    assert r.rpush("q", "a", "b", "c") == 3
    assert r.lpush("q", "z") == 4
    assert r.llen("q") == 4
    assert r.lpop("q") == b"z"
    assert r.rpop("q") == b"c"
    assert r.lpop("q", 2) == [b"a", b"b"]
    assert r.lpop("q") is None
    assert r.blpop(["q"], timeout=0.1) is None
    popped = []

    def waiter():
        popped.append(client().blpop(["jobs"], timeout=10))

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)
    client().rpush("jobs", "job-1")
    thread.join(timeout=15)
    assert popped == [(b"jobs", b"job-1")], popped
    assert r.brpop(["q"], timeout=0.1) is None
    several_keys(r)


def several_keys(r):
    # Keys of one slot (one {hash tag}): the first holding an item answers.
    assert r.blpop(["{j}a", "{j}b"], timeout=0.1) is None
    r.rpush("{j}b", "b1", "b2")
    assert r.blpop(["{j}a", "{j}b"], timeout=1) == (b"{j}b", b"b1")
    assert r.brpop(["{j}a", "{j}b"], timeout=1) == (b"{j}b", b"b2")
    popped = []

    def waiter():
        popped.append(client().blpop(["{j}a", "{j}b", "{j}c"], timeout=10))

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)
    client().rpush("{j}c", "c1")
    thread.join(timeout=15)
    assert popped == [(b"{j}c", b"c1")], popped
    # The answered pop waits nowhere else: a push to another of its keys stays queued.
    assert r.rpush("{j}a", "a1") == 1
    assert r.lpop("{j}a") == b"a1"
    try:
        r.blpop(["apart-1", "apart-2"], timeout=0.1)
        raise AssertionError("BLPOP of keys of two slots must fail")
    except redis.ResponseError as error:
        assert str(error).startswith("CROSSSLOT"), str(error)


def listing(_):
    # A namespace of its own (AUTH's username names it), so that no other check's keys
    # are counted.
    r = client(username="listing", password="unused")
    neighbour = client(username="listing-next-door", password="unused")
    assert r.dbsize() == 0
    names = {f"user:{i}".encode() for i in range(300)} | {f"order:{i}".encode() for i in range(200)}
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.set(name, "v")
    pipe.execute()
    assert r.hset("user:h", "f", "v") == 1 and r.rpush("user:q", "a") == 1
    neighbour.set("user:neighbour", "v")
    everything = names | {b"user:h", b"user:q"}
    assert r.dbsize() == len(everything), r.dbsize()
    assert neighbour.dbsize() == 1
    listed = list(r.scan_iter(count=7))
    assert set(listed) == everything, everything ^ set(listed)
    users = {name for name in everything if name.startswith(b"user:")}
    assert set(r.scan_iter(match="user:*", count=50)) == users
    assert set(r.scan_iter(match="user:[12]?", count=1000)) == {f"user:{i}".encode() for i in range(10, 30)}
    assert list(r.scan_iter(_type="hash")) == [b"user:h"]
    assert list(r.scan_iter(_type="list")) == [b"user:q"]
    assert list(neighbour.scan_iter()) == [b"user:neighbour"]
    cursor, page = r.scan(0, count=5)
    assert cursor != 0 and len(page) < len(everything), (cursor, len(page))
    for bad, expected in [
        (("SCAN", "x"), "invalid cursor"),
        (("SCAN", 0, "COUNT", 0), "syntax error"),
        (("SCAN", 0, "TYPE", "nothing"), "unknown type name"),
        (("SCAN", 0, "MATCH"), "syntax error"),
        (("DBSIZE", "extra"), "wrong number of arguments"),
    ]:
        try:
            r.execute_command(*bad)
            raise AssertionError(f"{bad} must fail")
        except redis.ResponseError as error:
            assert expected in str(error), (bad, str(error))
    r.delete(*everything)
    assert r.dbsize() == 0 and list(r.scan_iter()) == []


def engram_objects(r):
    fence = r.execute_command("LOCK.ACQUIRE", "lock", "fn-1", 60_000)
    assert isinstance(fence, int) and fence > 0
    assert r.execute_command("LOCK.ACQUIRE", "lock", "fn-2", 60_000) is None
    owner, held_fence, remaining = r.execute_command("LOCK.HOLDER", "lock")
    assert (owner, held_fence) == (b"fn-1", fence) and 0 < remaining <= 60_000
    assert r.execute_command("LOCK.RENEW", "lock", "fn-1", fence, 60_000) == fence
    assert r.execute_command("LOCK.RELEASE", "lock", "fn-1", fence) == b"OK"
    try:
        r.execute_command("LOCK.RELEASE", "lock", "fn-1", fence)
        raise AssertionError("a second release must fail")
    except redis.ResponseError as error:
        assert str(error).startswith("NOTHOLDER"), str(error)
    permit = r.execute_command("SEM.ACQUIRE", "sem", 2, "fn-1", 60_000, "PERMITS", 2)
    assert isinstance(permit, int)
    assert r.execute_command("SEM.AVAILABLE", "sem", 2) == 0
    assert r.execute_command("SEM.ACQUIRE", "sem", 2, "fn-2", 60_000, "WAIT", 50) is None
    assert r.execute_command("SEM.RELEASE", "sem", permit) == b"OK"
    assert r.execute_command("SEM.AVAILABLE", "sem", 2) == 2
    first_generation, index = r.execute_command("BARRIER.WAIT", "barrier", 1, 1000)
    assert index == 0
    generation, index = r.execute_command("BARRIER.WAIT", "barrier", 1, 1000)
    assert (generation, index) == (first_generation + 1, 0)
    assert r.execute_command("LATCH.SET", "latch", 1) == 1
    assert r.execute_command("LATCH.COUNT", "latch") == 1
    assert r.execute_command("LATCH.COUNTDOWN", "latch") == 0
    assert r.execute_command("LATCH.WAIT", "latch", 100) == b"OK"
    assert r.execute_command("FUTURE.GET", "future", "WAIT", 50) is None
    assert r.execute_command("FUTURE.SET", "future", "done") == b"OK"
    assert r.execute_command("FUTURE.GET", "future") == b"done"


def connection(r):
    assert r.client_setname("worker") is True
    assert r.client_getname() == "worker"
    assert isinstance(r.client_id(), int)
    assert r.execute_command("SELECT", 0) is True
    info = r.info()
    assert "redis_version" in info
    assert isinstance(r.time()[0], int)
    resp3 = client(protocol=3)
    assert resp3.ping() is True
    assert resp3.hgetall("h") == {b"b": b"2", b"n": b"5"}
    assert resp3.get("absent") is None


def locker(index, witness, marker):
    """One function of many: takes the lock under its invocation id, checks nobody else
    is inside (an exclusive marker file), records its fence, releases."""
    r = client()
    for round_ in range(ROUNDS_PER_LOCKER):
        owner = f"invocation-{index}-{round_}"
        fence = r.execute_command("LOCK.ACQUIRE", "shared", owner, 30_000, "WAIT", 60_000)
        assert fence is not None, "the wait ran out"
        descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with open(witness, "a") as log:
            log.write(f"{fence}\n")
        time.sleep(0.005)
        os.close(descriptor)
        os.remove(marker)
        assert r.execute_command("LOCK.RELEASE", "shared", owner, fence) == b"OK"


def many_lockers():
    witness = os.path.join(SCRATCH, "witness.log")
    marker = os.path.join(SCRATCH, "inside")
    processes = [multiprocessing.Process(target=locker, args=(i, witness, marker)) for i in range(LOCKERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0, f"a locker failed: exit {process.exitcode}"
    with open(witness) as log:
        fences = [int(line) for line in log]
    assert len(fences) == LOCKERS * ROUNDS_PER_LOCKER, len(fences)
    assert all(a < b for a, b in zip(fences, fences[1:])), fences


def redis_cli_interactive():
    """redis-cli on a terminal, as a person starts it: its start-up sequence must pass,
    then typed commands are answered. The test plays the terminal: it answers the
    cursor-position queries of redis-cli's line editor as a terminal would."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        ["redis-cli", "-h", HOST, "-p", str(PORT)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
    )
    os.close(follower)
    seen = bytearray()

    def read_for(seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                return
            seen.extend(chunk)
            for _ in range(chunk.count(b"\x1b[6n")):
                os.write(leader, b"\x1b[1;1R")

    read_for(1.0)
    for line in (b"set typed-key typed-value", b"get typed-key", b"lock.acquire typed-lock me 5000", b"quit"):
        os.write(leader, line + b"\r")
        read_for(1.0)
    process.wait(timeout=10)
    os.close(leader)
    text = seen.decode(errors="replace")
    assert process.returncode == 0, text
    assert "\nOK\r\n" in text and '"typed-value"' in text, text
    assert "(integer)" in text, text
    assert "ERR" not in text, text


def main():
    r = client()
    for check in (strings, keys, hashes, lists, listing, engram_objects, connection):
        check(r)
        print(f"ok {check.__name__}", flush=True)
    many_lockers()
    print("ok many_lockers", flush=True)
    redis_cli_interactive()
    print("ok redis_cli_interactive", flush=True)


if __name__ == "__main__":
    main()
