"""Cache keys: identical work shares a key whatever the node ids, any upstream change shows, long chains work."""

from __future__ import annotations

from comfykit.engine.cache import _Never, changed_value, signatures


def _keys(prompt, changed=None, unique=()):
    return signatures(prompt, changed or (lambda n: None), lambda n: n in unique)


def _chain(n: int, prefix: str = "", seed: int = 1) -> dict:
    prompt = {f"{prefix}0": {"class_type": "Start", "inputs": {"seed": seed}}}
    for i in range(1, n):
        prompt[f"{prefix}{i}"] = {"class_type": "Step", "inputs": {"x": [f"{prefix}{i - 1}", 0], "k": 0.5}}
    return prompt


def test_identical_subgraphs_share_keys_whatever_their_ids():
    a, b = _keys(_chain(5)), _keys(_chain(5, prefix="n"))
    assert [a[str(i)] for i in range(5)] == [b[f"n{i}"] for i in range(5)]


def test_an_upstream_change_changes_every_key_below_it():
    a, b = _keys(_chain(6, seed=1)), _keys(_chain(6, seed=2))
    assert all(a[k] != b[k] for k in a)
    moved = _chain(6)
    moved["3"]["inputs"]["x"] = ["2", 1]  # another output socket
    c = _keys(moved)
    assert [c[k] == a[k] for k in a] == [True, True, True, False, False, False]


def test_numbers_that_compare_equal_share_a_key():
    one = {"1": {"class_type": "S", "inputs": {"v": 1}}}
    assert _keys(one) == _keys({"1": {"class_type": "S", "inputs": {"v": 1.0}}})
    assert _keys(one) == _keys({"1": {"class_type": "S", "inputs": {"v": True}}})
    assert _keys(one) != _keys({"1": {"class_type": "S", "inputs": {"v": 1.5}}})
    assert _keys(one) != _keys({"1": {"class_type": "S", "inputs": {"v": "1"}}})


def test_unique_nodes_and_always_changed_nodes():
    prompt = {"1": {"class_type": "S", "inputs": {}}, "2": {"class_type": "S", "inputs": {}},
              "3": {"class_type": "T", "inputs": {"x": ["1", 0]}}}
    plain = _keys(prompt)
    assert plain["1"] == plain["2"]
    assert _keys(prompt, unique={"1", "2"})["1"] != _keys(prompt, unique={"1", "2"})["2"]
    never = {"1": changed_value(float("nan"))}
    assert isinstance(never["1"], _Never)
    first, second = _keys(prompt, lambda n: never.get(n)), _keys(prompt, lambda n: never.get(n))
    assert first["1"] != second["1"] and first["3"] != second["3"]  # re-runs, and so does what it feeds
    assert first["2"] == second["2"]


def test_a_long_chain_a_cycle_and_a_missing_link():
    keys = _keys(_chain(50_000))
    assert len(set(keys.values())) == 50_000
    cycle = {"1": {"class_type": "S", "inputs": {"x": ["2", 0]}}, "2": {"class_type": "S", "inputs": {"x": ["1", 0]}},
             "3": {"class_type": "S", "inputs": {"x": ["9", 0]}}}
    assert set(_keys(cycle)) == {"1", "2", "3"}


def test_values_of_subclasses_and_nested_values_key_like_their_plain_twins():
    import enum

    class Size(enum.IntEnum):
        SMALL = 64

    class Mode(str, enum.Enum):
        FAST = "fast"

    class Real(float):
        pass

    plain = {"1": {"class_type": "S", "inputs": {"w": 64, "m": "fast", "f": 0.25, "l": [1, {"a": 2.0}]}}}
    fancy = {"1": {"class_type": "S", "inputs": {"w": Size.SMALL, "m": Mode.FAST, "f": Real(0.25),
                                                 "l": (True, {"a": 2})}}}
    assert _keys(plain) == _keys(fancy)
    assert _keys(plain) != _keys({"1": {"class_type": "S", "inputs": {**plain["1"]["inputs"], "l": [1, {"a": 3}]}}})


def test_keys_do_not_depend_on_the_order_nodes_are_listed_in():
    chain = _chain(30)
    backwards = dict(reversed(list(chain.items())))  # every node is met before its parents
    assert _keys(chain) == _keys(backwards)


def test_is_changed_and_unique_ids_cannot_pose_as_inputs():
    bare = {"1": {"class_type": "S", "inputs": {}}}
    assert _keys(bare, lambda n: 5) != _keys({"1": {"class_type": "S", "inputs": {"CHANGED": 5}}})
    assert _keys(bare, unique={"1"}) != _keys({"1": {"class_type": "S", "inputs": {"UNIQUE": "1"}}})
