"""bilevel.tree: flatten/unflatten round trips, structure equality, and the arithmetic.

The arithmetic is checked against numbers computed by hand. Every operand is a small integer
(or a half), so float64 arithmetic on them is exact and the comparisons use ``==``: any
difference at all is a bug, there is no rounding to allow for.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict, namedtuple
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bilevel import tree
from bilevel.backends import TorchBackend

Pair = namedtuple("Pair", ["w", "b"])
Other = namedtuple("Other", ["w", "b"])

D = torch.float64


def t(x: Any) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


def same(a: Any, b: Any) -> bool:
    """Deep equality that also compares container types and dict key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))
    return bool(a == b)


# ----------------------------------------------------------------------------- flatten


def test_flatten_sorts_dict_keys_and_walks_depth_first() -> None:
    nested = {"z": [1, (2, None)], "a": Pair(3, {"q": 4})}
    leaves, treedef = tree.flatten(nested)
    # keys sorted ('a' before 'z'); inside each container, left to right; None has no leaf
    assert leaves == [3, 4, 1, 2]
    assert treedef.num_leaves == 4
    assert str(treedef) == "{'a': Pair(*, {'q': *}), 'z': [*, (*, None)]}"


def test_round_trip_keeps_types_and_dict_key_order() -> None:
    original = {
        "z": [t(1.0), (t([2.0, 3.0]), None)],
        "a": Pair(t(4.0), {"y": t([[5.0]]), "b": t(6.0)}),
        "m": OrderedDict([("second", t(7.0)), ("first", t(8.0))]),
    }
    leaves, treedef = tree.flatten(original)
    rebuilt = tree.unflatten(treedef, leaves)
    assert same(rebuilt, original)
    # spelled out, because this is what torch.func compares: the rebuilt dicts keep the
    # user's key order, not the sorted order used for flattening
    assert list(rebuilt) == ["z", "a", "m"]
    assert list(rebuilt["a"].b) == ["y", "b"]
    assert type(rebuilt["m"]) is OrderedDict
    assert list(rebuilt["m"]) == ["second", "first"]
    assert type(rebuilt["a"]) is Pair
    assert type(rebuilt["z"][1]) is tuple


def test_map_result_keeps_the_first_trees_key_order() -> None:
    a = {"b": 1, "a": 2}
    out = tree.map(lambda x: 10 * x, a)
    assert list(out) == ["b", "a"]
    assert out == {"b": 10, "a": 20}


def test_dicts_with_same_keys_in_another_order_have_equal_structure() -> None:
    one = {"a": 1, "b": {"x": 2, "y": 3}}
    two = {"b": {"y": 30, "x": 20}, "a": 10}
    assert tree.structure(one) == tree.structure(two)
    # and flatten pairs the leaves by key, so leafwise operations line up
    assert tree.leaves(one) == [1, 2, 3]
    assert tree.leaves(two) == [10, 20, 30]
    assert tree.add(one, two) == {"a": 11, "b": {"x": 22, "y": 33}}
    assert list(tree.add(two, one)) == ["b", "a"]


def test_none_is_a_node_without_leaves() -> None:
    assert tree.leaves(None) == []
    assert tree.map(lambda x: x + 1, None) is None
    assert tree.unflatten(tree.structure(None), []) is None
    assert tree.map(lambda x: x + 1, [None, 1, {"n": None}]) == [None, 2, {"n": None}]
    assert tree.structure([None, 1]).num_leaves == 1


def test_namedtuples_round_trip_and_differ_from_tuples() -> None:
    p = Pair(w=[1, 2], b=3)
    rebuilt = tree.unflatten(tree.structure(p), tree.leaves(p))
    assert type(rebuilt) is Pair
    assert rebuilt == Pair(w=[1, 2], b=3)
    assert tree.structure(p) != tree.structure(([1, 2], 3))
    assert tree.structure(p) != tree.structure(Other([1, 2], 3))


def test_nested_and_empty_lists_round_trip() -> None:
    nested = [[1, [2, 3]], [], [[[4]]], ()]
    leaves, treedef = tree.flatten(nested)
    assert leaves == [1, 2, 3, 4]
    assert same(tree.unflatten(treedef, leaves), nested)
    # an empty list and an empty tuple are different containers
    assert tree.structure([]) != tree.structure(())


def test_dict_keys_of_mixed_types_flatten_consistently() -> None:
    # keys are sorted by repr, which works for keys that do not compare with each other
    d = {1: "int", "1": "str", (0,): "tuple"}
    leaves, treedef = tree.flatten(d)
    assert sorted(leaves) == ["int", "str", "tuple"]
    assert tree.unflatten(treedef, leaves) == d
    assert list(tree.unflatten(treedef, leaves)) == [1, "1", (0,)]


# Random nests of dicts, lists, tuples and None over int leaves.
_trees = st.recursive(
    st.integers(-5, 5) | st.none(),
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(st.text("abcxyz", min_size=1, max_size=2), children, max_size=3)
    ),
    max_leaves=12,
)


@given(_trees)
def test_round_trip_property(x: Any) -> None:
    leaves, treedef = tree.flatten(x)
    assert treedef.num_leaves == len(leaves)
    assert same(tree.unflatten(treedef, leaves), x)
    assert tree.structure(tree.map(lambda v: v, x)) == treedef


def test_unflatten_with_the_wrong_number_of_leaves_raises() -> None:
    treedef = tree.structure({"a": 1, "b": [2]})
    with pytest.raises(ValueError, match=r"tree\.unflatten: got 1 leaves for a structure with 2"):
        tree.unflatten(treedef, [1])
    with pytest.raises(ValueError, match=r"got 3 leaves .* one leaf per '\*' in \{'a': \*"):
        tree.unflatten(treedef, [1, 2, 3])


def test_defaultdict_round_trips() -> None:
    d = defaultdict(list, {"b": 1, "a": 2})
    out = tree.map(lambda x: x + 1, d)
    assert out == {"b": 2, "a": 3}
    assert list(out) == ["b", "a"]


# -------------------------------------------------------------------- mismatched structures


@pytest.mark.parametrize(
    ("a", "b", "shown"),
    [
        ({"a": 1}, {"b": 1}, r"\{'b': \*\}"),
        ({"a": 1}, {"a": 1, "b": 2}, r"\{'a': \*, 'b': \*\}"),
        ([1, 2], (1, 2), r"\(\*, \*\)"),
        ([1, 2], [1, 2, 3], r"\[\*, \*, \*\]"),
        ([1, None], [1, 2], r"\[\*, \*\]"),
        ({"a": 1}, {"a": [1]}, r"\{'a': \[\*\]\}"),
        (Pair(1, 2), (1, 2), r"\(\*, \*\)"),
        (Pair(1, 2), Other(1, 2), r"Other\(\*, \*\)"),
    ],
)
def test_map_over_mismatched_structures_raises(a: Any, b: Any, shown: str) -> None:
    # the message names the call, the offending structure and the fix
    with pytest.raises(ValueError, match=r"tree\.map: argument 1 has structure " + shown):
        tree.map(lambda x, y: x, a, b)
    with pytest.raises(ValueError, match="pass trees with the same containers and keys"):
        tree.add(a, b)


def test_map_names_which_extra_argument_mismatches() -> None:
    with pytest.raises(ValueError, match=r"argument 2 has structure \{'a': \[\*\]\}"):
        tree.map(lambda x, y, z: x, {"a": 1}, {"a": 2}, {"a": [3]})


@pytest.mark.parametrize("op", [tree.add, tree.sub, lambda a, b: tree.axpy(2.0, a, b)])
def test_binary_ops_reject_mismatched_trees(op: Any) -> None:
    with pytest.raises(ValueError, match=r"tree\.map: argument 1"):
        op({"w": t([1.0])}, {"v": t([1.0])})


def test_vdot_rejects_mismatched_trees() -> None:
    with pytest.raises(ValueError, match=r"structure"):
        tree.vdot({"a": t([1.0, 1.0])}, {"b": t([1.0, 1.0])})


def test_vdot_leaf_count_mismatch_message_names_the_call() -> None:
    with pytest.raises(ValueError, match=r"tree\.vdot"):
        tree.vdot([t([1.0])], [t([1.0]), t([2.0])])


# ----------------------------------------------------------------------------- arithmetic

A = {"w": [1.0, 2.0], "b": 3.0}
B = {"w": [4.0, 5.0], "b": -2.0}


def tt(x: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: t(v) for k, v in x.items()}


def test_vdot_by_hand() -> None:
    # 1·4 + 2·5 + 3·(−2) = 8
    v = tree.vdot(tt(A), tt(B))
    assert isinstance(v, torch.Tensor)
    assert v.ndim == 0
    assert v.dtype == D
    assert v.item() == 8.0
    # pairs leaves by key even when the second dict lists them in another order
    assert tree.vdot(tt(A), {"b": t(-2.0), "w": t([4.0, 5.0])}).item() == 8.0
    # ‖A‖² = 1 + 4 + 9
    assert tree.vdot(tt(A), tt(A)).item() == 14.0


def test_vdot_over_mixed_shapes_sums_every_entry() -> None:
    a = [t(2.0), (t([[1.0], [2.0]]), {"k": t([[1.0, -1.0, 0.5]])})]
    b = [t(3.0), (t([[4.0], [-1.0]]), {"k": t([[2.0, 2.0, 2.0]])})]
    # 2·3 + (1·4 + 2·(−1)) + (2 − 2 + 1) = 6 + 2 + 1
    assert tree.vdot(a, b).item() == 9.0


def test_vdot_of_a_tree_without_leaves_is_zero() -> None:
    assert tree.vdot({}, {}) == 0.0
    assert tree.vdot(None, None) == 0.0


def test_add_sub_scale_axpy_by_hand() -> None:
    a, b = tt(A), tt(B)
    added = tree.add(a, b)
    assert added["w"].tolist() == [5.0, 7.0]
    assert added["b"].item() == 1.0
    diff = tree.sub(a, b)
    assert diff["w"].tolist() == [-3.0, -3.0]
    assert diff["b"].item() == 5.0
    scaled = tree.scale(-0.5, a)
    assert scaled["w"].tolist() == [-0.5, -1.0]
    assert scaled["b"].item() == -1.5
    # axpy(s, x, y) = s·x + y: 2·[1, 2] + [4, 5] = [6, 9]; 2·3 − 2 = 4
    res = tree.axpy(2.0, a, b)
    assert res["w"].tolist() == [6.0, 9.0]
    assert res["b"].item() == 4.0
    # a 0-d tensor scalar works like a float, and keeps the dtype
    res0 = tree.axpy(t(-1.0), a, b)
    assert res0["w"].tolist() == [3.0, 3.0]
    assert res0["b"].item() == -5.0
    assert res0["w"].dtype == D
    assert list(res) == list(a)


def test_arithmetic_does_not_modify_its_inputs() -> None:
    a, b = tt(A), tt(B)
    before = {k: v.clone() for k, v in a.items()}
    tree.add(a, b)
    tree.sub(a, b)
    tree.scale(3.0, a)
    tree.axpy(2.0, a, b)
    assert all(torch.equal(a[k], before[k]) for k in a)


def test_zeros_like_keeps_structure_shapes_and_dtypes() -> None:
    x = {"f": t([[1.5, -2.0]]), "i": torch.tensor([3, 4]), "s": [t(7.0)]}
    z = TorchBackend().zeros_like(x)
    assert tree.structure(z) == tree.structure(x)
    assert z["f"].shape == (1, 2)
    assert z["f"].dtype == D
    assert z["i"].dtype == torch.int64
    assert all(bool((leaf == 0).all()) for leaf in tree.leaves(z))


def test_zeros_like_of_non_finite_values_is_zero() -> None:
    z = TorchBackend().zeros_like({"a": t([float("nan"), float("inf"), 1.0])})
    assert z["a"].tolist() == [0.0, 0.0, 0.0]
