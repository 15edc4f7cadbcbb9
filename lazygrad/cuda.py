"""torch.cuda's first question, for code written for PyTorch: `device = "cuda" if torch.cuda.is_available() else
"cpu"`. lazygrad reaches GPUs through OpenCL, and the device name "cuda" is an alias of the opencl backend
(lazygrad/device.py), so is_available() says whether that backend starts on a GPU."""

from lazygrad import backends


def is_available() -> bool:
    """Whether the opencl backend ("cuda") starts and runs on a GPU (a CPU OpenCL driver such as PoCL is not one)."""
    try:
        return backends.get("opencl").is_gpu
    except backends.BackendUnavailable:
        return False
