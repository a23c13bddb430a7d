"""The messages API (issue 15): append_message, messages(), delete_message."""

from __future__ import annotations

import pytest

import clawvm_store as cvm


@pytest.fixture
def sess(store: cvm.Store) -> cvm.Session:
    return store.session("s1", project="p")


def test_append_and_read_back_in_order(sess: cvm.Session) -> None:
    a = sess.append_message("user", "hello")
    b = sess.append_message(
        "assistant",
        None,
        tool_calls=[
            {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
        ],
    )
    c = sess.append_message("tool", "a.txt", tool_call_id="c1", metadata={"raw": [1, 2]})
    assert [a.key, b.key, c.key] == [
        "conversation/m-00000001",
        "conversation/m-00000002",
        "conversation/m-00000003",
    ]
    msgs = sess.messages()
    assert [(m.seq, m.role, m.content) for m in msgs] == [
        (1, "user", "hello"),
        (2, "assistant", ""),
        (3, "tool", "a.txt"),
    ]
    assert msgs[1].tool_calls == [{"id": "c1", "name": "ls", "arguments": "{}"}]
    assert msgs[2].tool_call_id == "c1"
    assert msgs[2].metadata == {"raw": [1, 2]}
    sess.end_turn()
    assert [m.key for m in sess.messages()] == [a.key, b.key, c.key]


def test_dict_arguments_are_normalised(sess: cvm.Session) -> None:
    sess.append_message(
        "assistant", "x", tool_calls=[{"id": "c", "name": "f", "arguments": {"b": 1}}]
    )
    assert sess.messages()[0].tool_calls == [{"id": "c", "name": "f", "arguments": '{"b": 1}'}]


def test_delete_never_reuses_seq(sess: cvm.Session) -> None:
    sess.append_message("user", "one")
    second = sess.append_message("user", "two")
    sess.end_turn()
    sess.delete_message(second.key)
    assert [m.content for m in sess.messages()] == ["one"]
    sess.end_turn()
    assert [m.content for m in sess.messages()] == ["one"]
    third = sess.append_message("user", "three")
    assert third.key == "conversation/m-00000003"
    assert [m.content for m in sess.messages()] == ["one", "three"]


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        (("robot", "x"), {}, "message role must be one of"),
        (("tool", "x"), {}, "needs the tool_call_id"),
        (("user", "x"), {"tool_calls": [{"id": "c", "name": "f"}]}, "only an assistant"),
        (("assistant", "x"), {"tool_calls": [{"name": "f"}]}, "non-empty string id"),
        (("user", "x"), {"metadata": {"a": object()}}, "JSON-able"),
    ],
)
def test_bad_messages_are_refused(
    sess: cvm.Session, args: tuple[str, str], kwargs: dict[str, object], fragment: str
) -> None:
    with pytest.raises(cvm.ClawVMError, match=fragment):
        sess.append_message(*args, **kwargs)  # type: ignore[arg-type]
    assert sess.messages() == []


def test_delete_of_a_staged_message(sess: cvm.Session) -> None:
    first = sess.append_message("user", "one")
    sess.append_message("user", "two")
    sess.delete_message(first.key)
    assert [m.content for m in sess.messages()] == ["two"]
    result = sess.end_turn()
    assert result.rejected == []
    assert [m.content for m in sess.messages()] == ["two"]
    assert sess.append_message("user", "x").key == "conversation/m-00000003"


def test_tool_call_links_its_result_to_the_provider_call_id(sess: cvm.Session) -> None:
    first = sess.tool_call("ls", {"path": "."}, lambda path: "a.txt", call_id="call_A")
    page = sess.page(first.key)
    assert page.provenance == {"tool_call": 1, "call_ids": ["call_A"]}
    # A deliberate re-run writes the same page again; both provider ids keep their result.
    sess.tool_call("ls", {"path": "."}, lambda path: "a.txt b.txt", call_id="call_B", fresh=True)
    page = sess.page(first.key)
    assert page.provenance == {"tool_call": 2, "call_ids": ["call_A", "call_B"]}
    assert page.content == "a.txt b.txt"


def test_tool_call_without_call_id_keeps_old_provenance(sess: cvm.Session) -> None:
    result = sess.tool_call("ls", {"path": "."}, lambda path: "a.txt")
    assert sess.page(result.key).provenance == {"tool_call": 1}
    with pytest.raises(cvm.ClawVMError, match="call_id must be a non-empty string"):
        sess.tool_call("ls", {"path": "x"}, lambda path: "", call_id="")


def test_end_turn_journals_the_last_messages_in_its_own_transaction(
    store: cvm.Store, sess: cvm.Session
) -> None:
    first = sess.append_message("user", "hello")
    commits: list[str] = []
    from sqlalchemy import event

    def on_commit(conn: object) -> None:
        commits.append("commit")

    event.listen(store.db.engine, "commit", on_commit)
    try:
        result = sess.end_turn(
            [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "bye"}]
        )
    finally:
        event.remove(store.db.engine, "commit", on_commit)
    assert commits == ["commit"]  # the batch and the boundary: one commit
    assert [r.key for r in result.staged] == ["conversation/m-00000002", "conversation/m-00000003"]
    assert result.committed == [first.lsn, *(r.lsn for r in result.staged)]
    assert [(m.role, m.content) for m in sess.messages()] == [
        ("user", "hello"),
        ("assistant", "hi"),
        ("user", "bye"),
    ]
    page = store.page("conversation/m-00000003", project="p", session="s1")
    assert (page.version, page.content) == (1, "bye")
    events = store.query("SELECT boundary, committed FROM lifecycle_events WHERE session_id = 's1'")
    assert events == [{"boundary": "turn_end", "committed": 3}]
    assert sess.end_turn().staged == []


def test_end_turn_refuses_a_bad_message_before_writing_anything(sess: cvm.Session) -> None:
    sess.append_message("user", "hello")
    with pytest.raises(cvm.ClawVMError, match="role"):
        sess.end_turn([{"content": "no role"}])
    assert [(m.role, m.content) for m in sess.messages()] == [("user", "hello")]
    assert sess.staged()[0].key == "conversation/m-00000001"
