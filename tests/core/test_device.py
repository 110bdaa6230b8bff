import pytest
import torch

from pipeline.core.device import derive_seed, resolve_device
from pipeline.core.errors import PipelineError


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="no CUDA device"):
            resolve_device("cuda")


def test_a_bad_device_names_its_key():
    with pytest.raises(PipelineError, match=r"translate\.device 'tpu' is not a device"):
        resolve_device("tpu", "translate.device")


def test_seeds_differ_by_purpose_and_repeat():
    assert derive_seed(0, "init") == derive_seed(0, "init") != derive_seed(0, "data")
    assert 0 <= derive_seed(7, "pool_X") < 2**63
