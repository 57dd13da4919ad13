"""The host-runner protocol (device/protocol.py) and the one I/O-binding rule (timing.py)."""

from __future__ import annotations

import json

import pytest

from resnet_edge.device.protocol import JOB_FORMAT, Job, JobModel, output_key, session_key
from resnet_edge.device.runner import RunnerError, read_job
from resnet_edge.timing import IO_ON_DEVICE, IO_ON_HOST, binds_io_on_device, io_placement


def test_a_job_goes_through_json_and_back_unchanged() -> None:
    job = Job(
        "benchmark",
        [JobModel("a.onnx", "ab" * 32, "pool_0", upload="models/x.onnx"), JobModel("b.onnx", "cd" * 32, "pool_0")],
        providers=["cpu", "tensorrt[fp16=1]"],
        batch_sizes=[1, 8],
        warmup=2,
        iterations=5,
        cleanup=True,
    )
    assert Job.from_json(json.loads(json.dumps(job.to_json()))) == job


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"format": JOB_FORMAT + 1, "action": "facts"}, "job format 2; this runner reads format 1"),
        ({"format": JOB_FORMAT, "action": "facts", "surprise": 1}, "keys this runner does not know: surprise"),
        ([1, 2], "job format None"),
    ],
)
def test_the_runner_refuses_a_job_it_does_not_read_as_one_error(data: object, match: str) -> None:
    with pytest.raises(RunnerError, match=match) as caught:
        read_job(data)
    assert caught.value.kind == "job"


def test_host_and_runner_name_a_validate_session_alike() -> None:
    assert session_key(2, "cuda") == "2:cuda" and output_key(2, "cuda") == "out_2_cuda"


@pytest.mark.parametrize(
    ("ran_on", "bound"), [("cuda", True), ("tensorrt", True), ("cpu", False), ("openvino", False), ("ep:X", False)]
)
def test_one_io_binding_rule_for_timing_and_the_runner(ran_on: str, bound: bool) -> None:
    """The runner used to say "host memory" for a TensorRT row while timing.py bound its I/O on the GPU (issue 23):
    both now label the row with io_placement, which follows the rule session_runner binds by."""
    assert binds_io_on_device(ran_on) is bound
    assert io_placement(["cpu", ran_on]) == (IO_ON_DEVICE if bound else IO_ON_HOST)


def test_the_runner_labels_io_with_the_shared_rule() -> None:
    """No second copy of the rule in the runner: its benchmark answer's "io" comes from timing.io_placement."""
    import inspect

    from resnet_edge.device import runner

    source = inspect.getsource(runner._benchmark)
    assert "io_placement(" in source and "GPU" not in source and '"cuda"' not in source
