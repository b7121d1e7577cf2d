from __future__ import annotations

from pathlib import Path

from pdp.audit.spool import Spool


def test_spool_order_consume_and_reset(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.spool")
    sp.open()
    sp.append([b"a", b"b\n", b"c"])
    assert sp.pending == 3 and sp.peek(2) == [b"a\n", b"b\n"]
    sp.consume(sp.peek(2))
    assert sp.pending == 1 and sp.peek(5) == [b"c\n"]
    sp.consume(sp.peek(5))
    assert sp.pending == 0 and sp.path.stat().st_size == 0


def test_spool_resumes_after_crash_without_replaying_consumed(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.spool")
    sp.open()
    sp.append([f"{i}".encode() for i in range(10)])
    sp.consume(sp.peek(4))
    with open(sp.path, "ab") as f:
        f.write(b"torn-with-no-newline")  # a crash mid-append
    # no close(): as after kill -9
    again = Spool(tmp_path / "s.spool")
    again.open()
    assert again.pending == 6
    assert again.peek(100) == [f"{i}\n".encode() for i in range(4, 10)]
    assert again.take_all() and again.pending == 0
    assert not (tmp_path / "s.spool.offset").exists()
