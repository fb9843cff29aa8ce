"""Triton model configurations: config.pbtxt files read, overridden and derived."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from mlaas4hep.serve.backends import TensorInfo, load_backend
from mlaas4hep.serve.batching import BatchingConfig
from mlaas4hep.serve.errors import BadRequest, ModelLoadError
from mlaas4hep.serve.repository import VersionPolicy
from mlaas4hep.serve.triton_config import (
    ModelConfig,
    apply_override,
    default_file_names,
    derive_config,
    parse_model_config,
    read_model_config,
)

DENSENET = """
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 100
  preferred_batch_size: [ 4, 8 ]
}
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
version_policy: { latest: { num_versions: 2 } }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""

TORCH_INPUTS = """
platform: "pytorch_libtorch"
max_batch_size: {mbs}
input [
  {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2, -1 ] }},
  {{ name: "INPUT__1" data_type: TYPE_FP32 dims: [ 5, -1 ] }},
  {{ name: "mask" data_type: TYPE_FP32 dims: [ 1, -1 ] }}
]
output [
  {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 7 ] }}
]
"""


def write_config(root: Path, name: str, text: str) -> Path:
    """``<root>/<name>/config.pbtxt`` holding ``text``; returns the model directory."""
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir


# -- reading config.pbtxt --------------------------------------------------------


def test_onnx_config_as_in_the_triton_docs(tmp_path: Path) -> None:
    config = read_model_config(write_config(tmp_path, "densenet_onnx", DENSENET))
    assert config is not None
    assert config.name == "densenet_onnx"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert config.inputs == [TensorInfo("data_0", "FP32", [-1, 3, 224, 224])]
    assert config.outputs == [TensorInfo("fc6_1", "FP32", [-1, 1000])]
    assert config.version_policy == VersionPolicy("latest", count=2)
    assert config.batching == BatchingConfig(max_batch_size=8, max_queue_delay=1e-4, instances=2)
    assert config.default_model_filename is None
    assert config.raw.backend == "onnxruntime"  # completed, as Triton does
    assert config.backend_params() == {
        "inputs": [{"name": "data_0", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
        "outputs": [{"name": "fc6_1", "datatype": "FP32", "shape": [-1, 1000]}],
    }


def test_to_json_as_triton_answers(tmp_path: Path) -> None:
    config = read_model_config(write_config(tmp_path, "densenet_onnx", DENSENET))
    assert config is not None
    data = config.to_json()
    json.dumps(data)  # plain JSON
    assert data["name"] == "densenet_onnx"
    assert data["platform"] == "onnxruntime_onnx"
    assert data["backend"] == "onnxruntime"
    assert data["max_batch_size"] == 8
    assert data["version_policy"] == {"latest": {"num_versions": 2}}
    # 64-bit integers as numbers (Triton fixes protobuf's strings), defaults printed.
    assert data["input"] == [
        {
            "name": "data_0",
            "data_type": "TYPE_FP32",
            "format": "FORMAT_NCHW",
            "dims": [3, 224, 224],
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": False,
            "is_non_linear_format_io": False,
        }
    ]
    assert data["output"][0]["dims"] == [1000]
    assert data["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert data["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert data["instance_group"][0]["count"] == 2
    assert data["instance_group"][0]["kind"] == "KIND_CPU"
    assert data["parameters"] == {"intra_op_thread_count": {"string_value": "1"}}
    assert data["batch_input"] == []


def test_to_json_specific_versions_are_numbers() -> None:
    config = parse_model_config(
        'platform: "onnxruntime_onnx" version_policy: { specific: { versions: [ 1, 3 ] } }', "m"
    )
    assert config.version_policy == VersionPolicy("specific", versions=(1, 3))
    assert config.to_json()["version_policy"] == {"specific": {"versions": [1, 3]}}
    everything = parse_model_config('platform: "onnxruntime_onnx" version_policy: { all: {} }', "m")
    assert everything.version_policy == VersionPolicy("all")


@pytest.mark.parametrize("max_batch_size", [0, 16])
def test_pytorch_inputs_get_the_batch_dimension(max_batch_size: int) -> None:
    config = parse_model_config(TORCH_INPUTS.format(mbs=max_batch_size), "mixer")
    batch = [-1] if max_batch_size else []
    assert config.platform == "pytorch_libtorch"
    assert config.raw.backend == "pytorch"
    assert config.max_batch_size == max_batch_size
    assert config.inputs == [
        TensorInfo("INPUT__0", "FP32", [*batch, 2, -1]),
        TensorInfo("INPUT__1", "FP32", [*batch, 5, -1]),
        TensorInfo("mask", "FP32", [*batch, 1, -1]),
    ]
    assert config.outputs == [TensorInfo("OUTPUT__0", "FP32", [*batch, 7])]
    # Without dynamic_batching, Triton runs each request alone.
    assert config.batching == BatchingConfig(max_batch_size=0, instances=1)
    assert config.version_policy is None


@pytest.mark.parametrize(
    ("triton", "v2"),
    [
        ("TYPE_BOOL", "BOOL"),
        ("TYPE_UINT8", "UINT8"),
        ("TYPE_UINT16", "UINT16"),
        ("TYPE_UINT32", "UINT32"),
        ("TYPE_UINT64", "UINT64"),
        ("TYPE_INT8", "INT8"),
        ("TYPE_INT16", "INT16"),
        ("TYPE_INT32", "INT32"),
        ("TYPE_INT64", "INT64"),
        ("TYPE_FP16", "FP16"),
        ("TYPE_FP32", "FP32"),
        ("TYPE_FP64", "FP64"),
        ("TYPE_BF16", "BF16"),
        ("TYPE_STRING", "BYTES"),
    ],
)
def test_data_types(triton: str, v2: str) -> None:
    text = f"""
        backend: "onnxruntime"
        max_batch_size: 4
        input [ {{ name: "x" data_type: {triton} dims: [ 1 ] }} ]
        output [ {{ name: "y" data_type: {triton} dims: [ -1 ] }} ]
    """
    config = parse_model_config(text, "m")
    assert config.inputs == [TensorInfo("x", v2, [-1, 1])]
    assert config.outputs == [TensorInfo("y", v2, [-1, -1])]
    assert config.to_json()["input"][0]["data_type"] == triton
    derived = derive_config(
        "m",
        "onnxruntime_onnx",
        config.inputs,
        config.outputs,
        batching=BatchingConfig(max_batch_size=4),
        policy=VersionPolicy("latest"),
    )
    assert derived.raw.input == config.raw.input


def test_backend_without_platform_and_auto_completed_tensors(tmp_path: Path) -> None:
    config = read_model_config(write_config(tmp_path, "auto", 'backend: "onnxruntime"\n'))
    assert config is not None
    assert config.name == "auto"  # no name: the directory's
    assert config.platform == "onnxruntime_onnx"
    assert config.inputs == config.outputs == []
    assert config.backend_params() == {}  # the backend describes its own tensors
    assert default_file_names(config.platform) == ("model.onnx",)


@pytest.mark.parametrize(
    ("text", "platform", "backend"),
    [
        ('backend: "pytorch"', "pytorch_libtorch", "pytorch"),
        (
            'backend: "tensorflow" default_model_filename: "model.graphdef"',
            "tensorflow_graphdef",
            "tensorflow",
        ),
        ('platform: "tensorflow_savedmodel"', "tensorflow_savedmodel", "tensorflow"),
        ('default_model_filename: "model.onnx"', "onnxruntime_onnx", "onnxruntime"),
        ('platform: "xgboost"', "xgboost", ""),
        ("max_batch_size: 0", "", ""),  # the model files decide
    ],
)
def test_platform_and_backend_complete_each_other(text: str, platform: str, backend: str) -> None:
    config = parse_model_config(text, "m")
    assert (config.platform, config.raw.platform, config.raw.backend) == (
        platform,
        platform,
        backend,
    )


def test_default_file_names() -> None:
    assert default_file_names("onnxruntime_onnx") == ("model.onnx",)
    assert default_file_names("pytorch_libtorch") == ("model.pt",)
    assert default_file_names("tensorflow_savedmodel") == ("model.savedmodel",)
    assert default_file_names("tensorflow_graphdef") == ("model.graphdef",)
    assert default_file_names("xgboost") == ("model.json", "model.ubj")
    assert default_file_names("") == ()
    config = parse_model_config(
        'platform: "onnxruntime_onnx" default_model_filename: "a.onnx"', "m"
    )
    assert config.default_model_filename == "a.onnx"


def test_instances_and_batching() -> None:
    config = parse_model_config(
        """
        platform: "onnxruntime_onnx"
        max_batch_size: 32
        dynamic_batching { }
        instance_group [ { count: 3 kind: KIND_CPU }, { kind: KIND_GPU } ]
        """,
        "m",
    )
    assert config.batching == BatchingConfig(max_batch_size=32, max_queue_delay=0.0, instances=4)
    unbatched = parse_model_config('platform: "onnxruntime_onnx" dynamic_batching { }', "m")
    assert unbatched.batching == BatchingConfig(max_batch_size=0)  # nothing to batch along


def test_read_model_config_without_file(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    assert read_model_config(tmp_path / "m") is None


# -- errors --------------------------------------------------------------------


def test_syntax_error_names_the_file_and_the_position(tmp_path: Path) -> None:
    text = 'name: "broken"\nmax_batch_size: 8\ninput [ { name: "x" data_type TYPE_FP32 } ]\n'
    with pytest.raises(ModelLoadError) as caught:
        read_model_config(write_config(tmp_path, "broken", text))
    message = str(caught.value)
    assert "broken/config.pbtxt" in message
    assert "line 3, column" in message


def test_unknown_type_names_the_position() -> None:
    text = 'platform: "onnxruntime_onnx"\ninput [ { name: "x" data_type: TYPE_FP128 dims: [1] } ]'
    with pytest.raises(ModelLoadError, match=r"m/config.pbtxt .*line 2, column \d+.*TYPE_FP128"):
        parse_model_config(text, "m")


def test_name_must_be_the_directory_name(tmp_path: Path) -> None:
    model_dir = write_config(tmp_path, "resnet", 'name: "densenet"\nplatform: "onnxruntime_onnx"')
    with pytest.raises(ModelLoadError, match=r"'densenet'.*'resnet'"):
        read_model_config(model_dir)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            (
                'platform: "onnxruntime_onnx" max_batch_size: 8 input [ { name: "x" '
                "data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]"
            ),
            "input 'x' with reshape, which this server does not support",
        ),
        (
            (
                'platform: "onnxruntime_onnx" output [ { name: "y" data_type: TYPE_INT32 dims: [ 2 ] '
                "is_shape_tensor: true } ]"
            ),
            "output 'y' with is_shape_tensor",
        ),
        (
            'platform: "onnxruntime_onnx" max_batch_size: 4 sequence_batching { }',
            "sequence_batching",
        ),
        ('platform: "ensemble"', "platform 'ensemble' is not served"),
        ('platform: "tensorrt_plan"', "platform 'tensorrt_plan' is not served"),
        ('backend: "python"', "backend 'python' is not served"),
        ('platform: "onnxruntime_onnx" backend: "pytorch"', "do not go together"),
        ("max_batch_size: -1", "max_batch_size must be ≥ 0"),
        ('input [ { name: "x" dims: [ 1 ] } ]', "input 'x' must have a data_type"),
        ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 0 ] } ]', "must be ≥ 1 or -1"),
        ('max_batch_size: 2 output [ { name: "y" data_type: TYPE_FP32 } ]', "must have dims"),
        (
            (
                'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] }, '
                '{ name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]'
            ),
            "listed twice",
        ),
        (
            "max_batch_size: 8 dynamic_batching { preferred_batch_size: [ 16 ] }",
            "preferred_batch_size 16",
        ),
        ("dynamic_batching { max_queue_delay_microseconds: 60000000 }", "max_queue_delay"),
        ("version_policy: { latest: { num_versions: 0 } }", "count must be ≥ 1"),
        (
            (
                'platform: "pytorch_libtorch" output [ { name: "OUTPUT__0" data_type: TYPE_FP32 '
                'dims: [ 1 ] }, { name: "OUTPUT__2" data_type: TYPE_FP32 dims: [ 1 ] } ]'
            ),
            "must end in __0 to __1",
        ),
    ],
)
def test_unsupported_or_invalid(text: str, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        parse_model_config(text, "m")


# -- the load API's config override -----------------------------------------------


def test_override_replaces_the_file() -> None:
    written = parse_model_config(DENSENET, "densenet_onnx")
    override = json.dumps(
        {
            "max_batch_size": 4,
            "input": [{"name": "data_0", "data_type": "TYPE_FP16", "dims": [3, -1, -1]}],
            "output": [{"name": "fc6_1", "data_type": "TYPE_FP16", "dims": ["1000"]}],
        }
    )
    config = apply_override(written, override, "densenet_onnx")
    assert config.name == "densenet_onnx"
    assert config.platform == "onnxruntime_onnx"  # kept: the override names no platform
    assert config.max_batch_size == 4
    assert config.inputs == [TensorInfo("data_0", "FP16", [-1, 3, -1, -1])]
    assert config.outputs == [TensorInfo("fc6_1", "FP16", [-1, 1000])]
    # Nothing else of the file: Triton replaces the whole configuration.
    assert config.version_policy is None
    assert config.batching == BatchingConfig(max_batch_size=0)
    assert not config.raw.parameters


def test_override_without_a_file() -> None:
    config = apply_override(None, '{"backend": "pytorch", "name": "m"}', "m")
    assert config.platform == "pytorch_libtorch"
    assert apply_override(None, "{}", "m").platform == ""


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("{", "is not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"max_batch_size": "many"}', "not a valid model configuration"),
        ('{"unknown_field": 1}', "unknown_field"),
        ('{"name": "other"}', "'other'"),
        (
            (
                '{"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1], '
                '"reshape": {"shape": []}}]}'
            ),
            "reshape",
        ),
    ],
)
def test_bad_override_is_a_bad_request(override: str, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        apply_override(None, override, "m")


# -- derived configurations --------------------------------------------------------


def round_trips(config: ModelConfig) -> None:
    """The derived config reads back the same from its text and from its JSON."""
    text = text_format.MessageToString(config.raw)
    assert parse_model_config(text, config.name) == config
    assert apply_override(None, json.dumps(config.to_json()), config.name) == config


def test_derive_batched_model_round_trip() -> None:
    config = derive_config(
        "tagger",
        "onnxruntime_onnx",
        [TensorInfo("jets", "FP32", [-1, 20, 4]), TensorInfo("flags", "BOOL", [-1, 20])],
        [TensorInfo("probabilities", "FP32", [-1, 3])],
        batching=BatchingConfig(max_batch_size=64, max_queue_delay=0.002, instances=3),
        policy=VersionPolicy("latest", count=2),
    )
    assert config.max_batch_size == 64
    assert config.inputs[0] == TensorInfo("jets", "FP32", [-1, 20, 4])
    assert config.batching == BatchingConfig(64, 0.002, 3)
    assert config.version_policy == VersionPolicy("latest", count=2)
    data = config.to_json()
    assert data["input"][0]["dims"] == [20, 4]
    assert data["backend"] == "onnxruntime"
    assert data["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert data["instance_group"] == [
        {
            "name": "tagger_0",
            "kind": "KIND_CPU",
            "count": 3,
            "gpus": [],
            "secondary_devices": [],
            "profile": [],
            "passive": False,
            "host_policy": "",
        }
    ]
    assert data["version_policy"] == {"latest": {"num_versions": 2}}
    round_trips(config)


def test_derive_unbatched_shapes_and_batching_off() -> None:
    # A 1-D output cannot carry Triton's implicit batch dimension: full shapes.
    config = derive_config(
        "bdt",
        "xgboost",
        [TensorInfo("features", "FP32", [-1, 12])],
        [TensorInfo("score", "FP32", [-1])],
        batching=BatchingConfig(max_batch_size=64),
        policy=VersionPolicy("specific", versions=(2, 5)),
    )
    assert config.max_batch_size == 0
    assert config.inputs == [TensorInfo("features", "FP32", [-1, 12])]
    assert config.to_json()["output"][0]["dims"] == [-1]
    assert config.default_model_filename is None
    round_trips(config)

    off = derive_config(
        "text",
        "tensorflow_savedmodel",
        [TensorInfo("sentence", "BYTES", [-1, 1])],
        [TensorInfo("label", "INT64", [-1, 1])],
        batching=BatchingConfig(max_batch_size=0, instances=2),
        policy=VersionPolicy("all"),
    )
    assert off.max_batch_size == 0
    assert not off.raw.HasField("dynamic_batching")
    assert off.batching == BatchingConfig(max_batch_size=0, instances=2)
    assert off.to_json()["input"][0]["data_type"] == "TYPE_STRING"
    round_trips(off)


# -- a real TorchScript model loaded as its config.pbtxt describes it ---------------


class Mixer(torch.nn.Module):
    """Two feature tensors weighted by a mask; two outputs of different shapes."""

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weighted = torch.cat([a, b], dim=1) * mask  # [B, 7, L]
        return weighted.sum(dim=2), mask.sum(dim=2)  # [B, 7], [B, 1]


@pytest.mark.parametrize(
    "input_names",
    [
        ("INPUT__0", "INPUT__1", "mask"),  # mixed: the order of the config
        ("INPUT__2", "INPUT__0", "INPUT__1"),  # all indexed: listed out of order on purpose
    ],
)
def test_torchscript_loads_as_its_config_describes(
    tmp_path: Path, input_names: tuple[str, str, str]
) -> None:
    dims = {"INPUT__0": "2, -1", "INPUT__1": "5, -1", "mask": "1, -1", "INPUT__2": "1, -1"}
    inputs = ",\n".join(
        f'  {{ name: "{name}" data_type: TYPE_FP32 dims: [ {dims[name]} ] }}'
        for name in input_names
    )
    text = f"""
name: "mixer"
platform: "pytorch_libtorch"
max_batch_size: 16
input [
{inputs}
]
output [
  {{ name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 7 ] }}
]
dynamic_batching {{ }}
"""
    model_dir = write_config(tmp_path, "mixer", text)
    (model_dir / "1").mkdir()
    module = torch.jit.script(Mixer().eval())
    torch.jit.save(module, str(model_dir / "1" / "model.pt"))  # type: ignore[no-untyped-call]

    config = read_model_config(model_dir)
    assert config is not None
    backend = load_backend(model_dir / "1", params=config.backend_params())
    try:
        assert backend.platform == config.platform
        params = config.backend_params()
        assert [t.to_dict() for t in backend.inputs] == params["inputs"]
        assert [t.to_dict() for t in backend.outputs] == params["outputs"]
        assert [t.name for t in backend.outputs] == ["OUTPUT__0", "OUTPUT__1"]
        assert sorted(backend.inputs, key=lambda t: t.name) == sorted(
            config.inputs, key=lambda t: t.name
        )
        assert sorted(backend.outputs, key=lambda t: t.name) == sorted(
            config.outputs, key=lambda t: t.name
        )
        rng = np.random.default_rng(1)
        arrays = {
            "INPUT__0": rng.normal(size=(3, 2, 6)).astype(np.float32),
            "INPUT__1": rng.normal(size=(3, 5, 6)).astype(np.float32),
            "mask": rng.integers(0, 2, size=(3, 1, 6)).astype(np.float32),
        }
        arrays["INPUT__2"] = arrays["mask"]
        feeds = {name: arrays[name] for name in input_names}
        result = backend.predict(feeds)
        with torch.inference_mode():
            first, second = module(
                *(torch.from_numpy(arrays[n]) for n in ("INPUT__0", "INPUT__1", "mask"))
            )
        np.testing.assert_allclose(result["OUTPUT__0"], first.numpy(), rtol=1e-6)
        np.testing.assert_allclose(result["OUTPUT__1"], second.numpy(), rtol=1e-6)
    finally:
        backend.close()
