"""The TOML key line scanner."""

from llmbuild.spec.positions import key_lines, line_of

DOC = '''\
# comment
a = 1
"quoted key" = 2
b.c = """
not = a key
"""
arr = [
  1,
  { x = 1 },
]

[t]
x = { y = 1, z = [1, 2] }
s = 'it''s # not a comment'

[[stage]]
name = "one"

[stage.schedule]
kind = "cosine"

[[stage]]
name = "two"
'''


def test_key_lines():
    lines = key_lines(DOC)
    assert lines[("a",)] == 2
    assert lines[("quoted key",)] == 3
    assert lines[("b", "c")] == 4
    assert ("not",) not in lines
    assert lines[("arr",)] == 7
    assert ("x",) not in lines  # inside the array's inline table
    assert lines[("t",)] == 12
    assert lines[("t", "x")] == 13
    assert lines[("t", "s")] == 14
    assert lines[("stage", 0)] == 16
    assert lines[("stage", 0, "name")] == 17
    assert lines[("stage", 0, "schedule")] == 19
    assert lines[("stage", 0, "schedule", "kind")] == 20
    assert lines[("stage", 1, "name")] == 23


def test_line_of_falls_back_to_the_enclosing_key():
    lines = key_lines(DOC)
    assert line_of(lines, ("t", "x", "y")) == 13
    assert line_of(lines, ("stage", 1, "lr")) == 22
    assert line_of(lines, ("nothing",)) is None
