"""Mesh specs and the logical-axis rules."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxrl.errors import JaxrlError
from jaxrl.sharding import LogicalMesh, MeshSpec, make_mesh


def test_parse_and_resolve():
    assert MeshSpec.parse("data=1,fsdp=-1,tensor=1").resolve(8) == (1, 8, 1)
    assert MeshSpec.parse("tensor=4").resolve(8) == (1, 2, 4)
    assert MeshSpec.parse("data=2,fsdp=2,tensor=2").resolve(8) == (2, 2, 2)
    assert MeshSpec.parse("data=-1,fsdp=2").resolve(8) == (4, 2, 1)


@pytest.mark.parametrize(
    "text, message",
    [("tensor=3", "does not divide 8 devices"), ("fsdp=3", "needs 3 devices but 8"),
     ("data=2,fsdp=2,tensor=1", "needs 4 devices"),
     ("pipeline=2", "expected axis=size"), ("fsdp=two", "not an integer"),
     ("data=-1,fsdp=-1", "at most one -1"), ("", "expected e.g.")],
)  # fmt: skip
def test_bad_specs(text, message):
    with pytest.raises(JaxrlError, match=message):
        MeshSpec.parse(text).resolve(8) if text else MeshSpec.parse(text)


def test_mesh_uses_all_devices():
    mesh = make_mesh("fsdp=2,tensor=4")
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 4}
    assert mesh.devices.size == len(jax.devices()) == 8


def test_rules_map_logical_axes():
    lm = LogicalMesh(make_mesh("data=2,fsdp=2,tensor=2"))
    assert lm.spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert lm.spec(("batch", "seq", None)) == P(("data", "fsdp"), None, None)
    assert lm.spec(("layers", "embed", "heads", "head_dim")) == P(None, "fsdp", "tensor", None)


def test_undivisible_dimension_is_replicated():
    lm = LogicalMesh(make_mesh("fsdp=2,tensor=4"))
    assert lm.spec(("embed", "kv_heads"), shape=(64, 2)) == P("fsdp", None)


def test_two_logical_axes_on_one_mesh_axis_is_an_error():
    lm = LogicalMesh(make_mesh("fsdp=8"))
    with pytest.raises(JaxrlError, match="'batch' and 'embed' of one tensor both map to mesh axis 'fsdp'"):
        lm.spec(("batch", "embed"))


def test_unknown_logical_axis():
    with pytest.raises(JaxrlError, match="no sharding rule for logical axis 'experts'"):
        LogicalMesh(make_mesh("fsdp=8")).spec(("experts",))
