"""Positions in a live text are characters, as in Python's str, not UTF-8 bytes.

pycrdt 0.14 counts bytes: an insert at a byte offset inside a multi-byte
character silently went to the end of the text.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Text

import crdtdb


def test_edits_at_character_positions_in_non_ascii_text(db: crdtdb.Database) -> None:
    db.put("notes/a", {"t": Text("héllo wörld 🌍!")})
    with db.transaction() as tx:
        text = tx.doc("notes/a")["t"]
        assert len(text) == len("héllo wörld 🌍!")
        text.insert(2, "x")  # once "héllo wörld 🌍!x": byte 2 is inside "é"
        assert str(text) == "héxllo wörld 🌍!"
        del text[13]  # the globe, four bytes
        assert str(text) == "héxllo wörld !"
        text[8] = "o"
        text[0:2] = "H"
        assert str(text) == "Hxllo world !"
    assert db.get("notes/a") == {"t": "Hxllo world !"}


alphabet = st.sampled_from("aé🌍中\u0301 ")


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet, max_size=12),
    st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "replace"]),
            st.integers(-15, 15),
            st.integers(0, 4),
            st.text(alphabet, max_size=3),
        ),
        max_size=6,
    ),
)
def test_a_live_text_edits_like_a_python_str(
    tmp_path_factory: object, start: str, edits: list[tuple[str, int, int, str]]
) -> None:
    path = tmp_path_factory.mktemp("text")  # type: ignore[attr-defined]
    with crdtdb.open(path / "eu", region="eu") as db:
        db.put("notes/a", {"t": Text(start)})
        model = list(start)
        with db.transaction() as tx:
            text = tx.doc("notes/a")["t"]
            for op, at, span, value in edits:
                if op == "insert":
                    text.insert(at, value)
                    model.insert(at, value)  # clamped as DocText.insert clamps
                    model = list("".join(model))
                else:
                    lo = max(0, at if at >= 0 else len(model) + at)
                    hi = lo + span
                    if op == "delete":
                        del text[lo:hi]
                        del model[lo:hi]
                    else:
                        text[lo:hi] = value
                        model[lo:hi] = list(value)
                assert str(text) == "".join(model)
                assert len(text) == len(model)
        assert db.get("notes/a") == {"t": "".join(model)}
