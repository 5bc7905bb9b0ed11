"""bilevel.tree: flatten/unflatten round trips, structure equality, and the arithmetic.

The arithmetic is checked against numbers computed by hand. Every operand is a small integer
(or a half), so float64 arithmetic on them is exact and the comparisons use ``==``: any
difference at all is a bug, there is no rounding to allow for.

Every test with array leaves runs on torch and on JAX (the ``fw`` fixture,
``tests/_frameworks.py``): the arrays are built from NumPy with ``fw.array`` and read back with
``numpy``. Tests over plain Python leaves (ints, strings) touch no framework and run once.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict, namedtuple
from typing import Any

import numpy as np
import pytest
from _frameworks import Framework, numpy
from hypothesis import given
from hypothesis import strategies as st

from bilevel import tree
from bilevel.backends import backend_for

Pair = namedtuple("Pair", ["w", "b"])
Other = namedtuple("Other", ["w", "b"])

D = np.float64


def t(fw: Framework, x: Any) -> Any:
    """A float64 array of ``fw`` holding ``x``."""
    return fw.array(np.asarray(x, dtype=D))


def is_array(x: Any) -> bool:
    """Whether ``x`` is a torch or JAX array (not a Python number or a NumPy array)."""
    return hasattr(x, "shape") and not isinstance(x, np.ndarray)


def same(a: Any, b: Any) -> bool:
    """Deep equality that also compares container types and dict key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if is_array(a):
        na, nb = numpy(a), numpy(b)
        return na.dtype == nb.dtype and na.shape == nb.shape and bool(np.array_equal(na, nb))
    return bool(a == b)


# ----------------------------------------------------------------------------- flatten


def test_flatten_sorts_dict_keys_and_walks_depth_first() -> None:
    nested = {"z": [1, (2, None)], "a": Pair(3, {"q": 4})}
    leaves, treedef = tree.flatten(nested)
    # keys sorted ('a' before 'z'); inside each container, left to right; None has no leaf
    assert leaves == [3, 4, 1, 2]
    assert treedef.num_leaves == 4
    assert str(treedef) == "{'a': Pair(*, {'q': *}), 'z': [*, (*, None)]}"


def test_round_trip_keeps_types_and_dict_key_order(fw: Framework) -> None:
    original = {
        "z": [t(fw, 1.0), (t(fw, [2.0, 3.0]), None)],
        "a": Pair(t(fw, 4.0), {"y": t(fw, [[5.0]]), "b": t(fw, 6.0)}),
        "m": OrderedDict([("second", t(fw, 7.0)), ("first", t(fw, 8.0))]),
    }
    leaves, treedef = tree.flatten(original)
    rebuilt = tree.unflatten(treedef, leaves)
    assert same(rebuilt, original)
    # the leaves are the very array objects passed in, in flattening order
    assert leaves[0] is original["a"].w
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
def test_binary_ops_reject_mismatched_trees(fw: Framework, op: Any) -> None:
    with pytest.raises(ValueError, match=r"tree\.map: argument 1"):
        op({"w": t(fw, [1.0])}, {"v": t(fw, [1.0])})


def test_vdot_rejects_mismatched_trees(fw: Framework) -> None:
    with pytest.raises(ValueError, match=r"structure"):
        tree.vdot({"a": t(fw, [1.0, 1.0])}, {"b": t(fw, [1.0, 1.0])})


def test_vdot_leaf_count_mismatch_message_names_the_call(fw: Framework) -> None:
    with pytest.raises(ValueError, match=r"tree\.vdot"):
        tree.vdot([t(fw, [1.0])], [t(fw, [1.0]), t(fw, [2.0])])


# ----------------------------------------------------------------------------- arithmetic

A = {"w": [1.0, 2.0], "b": 3.0}
B = {"w": [4.0, 5.0], "b": -2.0}


def tt(fw: Framework, x: dict[str, Any]) -> dict[str, Any]:
    return {k: t(fw, v) for k, v in x.items()}


def value(x: Any) -> Any:
    """A 0-d array as a Python float, a 1-d one as a list of floats."""
    return numpy(x).tolist()


def test_vdot_by_hand(fw: Framework) -> None:
    # 1·4 + 2·5 + 3·(−2) = 8
    v = tree.vdot(tt(fw, A), tt(fw, B))
    assert is_array(v)
    assert backend_for(v).name == fw.name  # an array of the leaves' framework
    assert numpy(v).ndim == 0
    assert numpy(v).dtype == D
    assert value(v) == 8.0
    # pairs leaves by key even when the second dict lists them in another order
    assert value(tree.vdot(tt(fw, A), {"b": t(fw, -2.0), "w": t(fw, [4.0, 5.0])})) == 8.0
    # ‖A‖² = 1 + 4 + 9
    assert value(tree.vdot(tt(fw, A), tt(fw, A))) == 14.0


def test_vdot_over_mixed_shapes_sums_every_entry(fw: Framework) -> None:
    a = [t(fw, 2.0), (t(fw, [[1.0], [2.0]]), {"k": t(fw, [[1.0, -1.0, 0.5]])})]
    b = [t(fw, 3.0), (t(fw, [[4.0], [-1.0]]), {"k": t(fw, [[2.0, 2.0, 2.0]])})]
    # 2·3 + (1·4 + 2·(−1)) + (2 − 2 + 1) = 6 + 2 + 1
    assert value(tree.vdot(a, b)) == 9.0


def test_vdot_of_a_tree_without_leaves_is_zero() -> None:
    assert tree.vdot({}, {}) == 0.0
    assert tree.vdot(None, None) == 0.0


def test_add_sub_scale_axpy_by_hand(fw: Framework) -> None:
    a, b = tt(fw, A), tt(fw, B)
    added = tree.add(a, b)
    assert value(added["w"]) == [5.0, 7.0]
    assert value(added["b"]) == 1.0
    diff = tree.sub(a, b)
    assert value(diff["w"]) == [-3.0, -3.0]
    assert value(diff["b"]) == 5.0
    scaled = tree.scale(-0.5, a)
    assert value(scaled["w"]) == [-0.5, -1.0]
    assert value(scaled["b"]) == -1.5
    # axpy(s, x, y) = s·x + y: 2·[1, 2] + [4, 5] = [6, 9]; 2·3 − 2 = 4
    res = tree.axpy(2.0, a, b)
    assert value(res["w"]) == [6.0, 9.0]
    assert value(res["b"]) == 4.0
    # a 0-d array scalar works like a float, and keeps the dtype
    res0 = tree.axpy(t(fw, -1.0), a, b)
    assert value(res0["w"]) == [3.0, 3.0]
    assert value(res0["b"]) == -5.0
    assert numpy(res0["w"]).dtype == D
    assert all(is_array(leaf) and backend_for(leaf).name == fw.name for leaf in tree.leaves(res0))
    assert list(res) == list(a)


def test_arithmetic_does_not_modify_its_inputs(fw: Framework) -> None:
    a, b = tt(fw, A), tt(fw, B)
    leaves = dict(a)
    # copies: torch's .numpy() shares memory with the tensor, so an in-place change would show
    before = {k: np.array(numpy(v), copy=True) for k, v in a.items()}
    tree.add(a, b)
    tree.sub(a, b)
    tree.scale(3.0, a)
    tree.axpy(2.0, a, b)
    assert all(a[k] is leaves[k] for k in leaves) and list(a) == list(leaves)
    assert all(np.array_equal(numpy(a[k]), before[k]) for k in a)


def test_zeros_like_keeps_structure_shapes_and_dtypes(fw: Framework) -> None:
    x = {
        "f": t(fw, [[1.5, -2.0]]),
        "i": fw.array(np.array([3, 4], dtype=np.int64)),
        "s": [t(fw, 7.0)],
    }
    z = backend_for(x).zeros_like(x)
    assert tree.structure(z) == tree.structure(x)
    assert numpy(z["f"]).shape == (1, 2)
    assert numpy(z["f"]).dtype == D
    assert numpy(z["i"]).dtype == np.int64
    assert all(is_array(leaf) and backend_for(leaf).name == fw.name for leaf in tree.leaves(z))
    assert all(bool((numpy(leaf) == 0).all()) for leaf in tree.leaves(z))


def test_zeros_like_of_non_finite_values_is_zero(fw: Framework) -> None:
    x = {"a": t(fw, [float("nan"), float("inf"), 1.0])}
    z = backend_for(x).zeros_like(x)
    assert value(z["a"]) == [0.0, 0.0, 0.0]
