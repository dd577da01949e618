"""Loading checkpoints safely (`weights_only=True`) with one-line errors that name the problem.

A checkpoint is a local path, a file:// URL or an fsspec URL (s3://…); it is read, never downloaded
from a model hub.
"""

from __future__ import annotations

import torch
from torch import nn

from foundation.errors import LvdError
from foundation.storage import Location, location, open_input

RANDOM_WEIGHTS = "random"
"""`weights="random"`: the architecture at random init, for benchmarks and the baseline a trained
model is compared with; never a file name."""
WRAPPER_KEYS = ("state_dict", "model", "teacher")
STRIPPED_PREFIXES = ("module.", "backbone.", "_orig_mod.")


class CheckpointError(LvdError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


def read_state_dict(path: str | Location) -> dict[str, torch.Tensor]:
    """A flat tensor dict from `path`, unwrapping `{'model': …}`-style wrappers and DDP/backbone prefixes."""
    path = location(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass the path or storage URL of a file (nothing is downloaded)"
        )
    try:
        with open_input(path) as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip files, non-weights objects
        raise CheckpointError(f"checkpoint {path} cannot be read with weights_only=True: {exc}") from exc
    while isinstance(state, dict) and len(state) <= 4 and any(k in state for k in WRAPPER_KEYS):
        state = next(state[k] for k in WRAPPER_KEYS if k in state)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    for prefix in STRIPPED_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def load_strict(model: nn.Module, path: str | Location) -> nn.Module:
    """Load `path` into `model`, every key and shape matching, or raise naming the first mismatch."""
    state = read_state_dict(path)
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: missing key {key!r}")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {path} does not fit {type(model).__name__}: key {key!r} has shape "
                f"{tuple(state[key].shape)}, the model expects {tuple(tensor.shape)}"
            )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(model).__name__}: unexpected key {unexpected[0]!r}"
        )
    model.load_state_dict(state, strict=True)
    return model
