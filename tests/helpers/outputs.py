"""Reading a signature's outputs without depending on their key.

Signature outputs take the model's own output names (its output layers' names),
so most tests, which are about values, read the one output whatever it is called;
tests about names assert the keys themselves.
"""


def single(outputs):
    """The one output of a signature call (a dict), whatever its key."""
    assert len(outputs) == 1, f"expected one output, got {sorted(outputs)}"
    (value,) = outputs.values()
    return value
