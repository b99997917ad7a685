"""Drop-in replacements for torch.nn's recurrent modules, running pyrnn's kernels.

The classes subclass torch.nn's, so constructor arguments and their errors, parameter names, init,
state_dict, repr and isinstance checks are torch's own; only forward() is replaced. Input handling
(PackedSequence, unbatched input, batch_first, hidden-state checks and messages) follows torch.nn exactly.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional, scripting
from .scripting import check_cell

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]


def _compiling_without_allow_rnn() -> bool:
    """Whether torch.compile is at work (tracing, or its frame callback set around an eager frame) while
    torch._dynamo.config.allow_rnn is off. Dynamo then gives up on every torch.nn RNN module (pyrnn's are
    subclasses) and runs its forward eagerly: torch.nn's forward goes straight into its C++ kernels, while pyrnn's
    Python would be compiled in pieces, frame by frame, whose graphs have no double backward. So pyrnn runs the
    whole layer eagerly there (_run_eagerly), as torch.nn does."""
    if torch.compiler.is_compiling():  # (first: Dynamo cannot trace the frame-callback query)
        return not torch._dynamo.config.allow_rnn
    if torch._C._dynamo.eval_frame.get_eval_frame_callback() is None:
        return False  # plain eager (~0.1 us; reading Dynamo's config costs ~1 us)
    return not torch._dynamo.config.allow_rnn


def _run_eagerly(module, input, hx):
    # module._forward with Dynamo off for it and all it calls; made on first use, since importing torch._dynamo
    # (for its decorator) would add ~1 s to `import pyrnn`.
    global _eager_forward
    if _eager_forward is None:
        _eager_forward = torch._dynamo.disable(lambda module, input, hx: module._forward(input, hx))
    return _eager_forward(module, input, hx)


_eager_forward = None


class _Scriptable:
    def __prepare_scriptable__(self):
        # torch.jit.script compiles pyrnn.scripting's twin (same parameters, TorchScript calling pyrnn's ops).
        return scripting.twin(self)


class _RecurrentMixin(_Scriptable):
    """forward() for RNN, LSTM and GRU, shared; the torch.nn base class supplies everything else."""

    mode: str

    def flatten_parameters(self) -> None:
        """No-op kept for API compatibility: pyrnn lays out its weights itself on every call."""

    def _layer_weights(self) -> list[functional.LayerWeights]:
        # From _flat_weights, which _update_flat_weights() just refreshed, as torch.nn's forward reads them: reading
        # the attributes again would run a parametrization once more than torch.nn does, and a stateful one
        # (spectral_norm's power iteration in training) would then move differently.
        per_direction = 2 + (2 if self.bias else 0) + (1 if self.proj_size > 0 else 0)
        flat = self._flat_weights
        weights = []
        for k in range(0, len(flat), per_direction):
            w = flat[k:k + per_direction]
            weights.append(functional.LayerWeights(w[0], w[1], w[2] if self.bias else None,
                                                   w[3] if self.bias else None,
                                                   w[-1] if self.proj_size > 0 else None))
        return weights

    def _zeros_state(self, input: Tensor, batch: Union[int, Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        D = 2 if self.bidirectional else 1
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        h = torch.zeros(self.num_layers * D, batch, h_size, dtype=input.dtype, device=input.device)
        if self.mode != "LSTM":
            return h, None
        c = torch.zeros(self.num_layers * D, batch, self.hidden_size, dtype=input.dtype, device=input.device)
        return h, c

    def _check_hidden_rank(self, hx, is_batched: bool) -> None:
        want = 3 if is_batched else 2
        kind = "batched 3-D" if is_batched else "unbatched 2-D"
        if self.mode == "LSTM":
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
        elif hx.dim() != want:
            raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor")

    def forward(self, input, hx=None):
        if _compiling_without_allow_rnn():
            return _run_eagerly(self, input, hx)
        return self._forward(input, hx)

    def _forward(self, input, hx=None):
        self._update_flat_weights()
        is_lstm = self.mode == "LSTM"
        orig_input = input
        sorted_indices = unsorted_indices = None
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            is_batched = True
            if hx is None:
                # Traced (ONNX's TorchScript exporter), the batch stays a traced value, as torch.nn's does: the exporter
                # rewrites batch_sizes[0] into the padded input's batch size.
                hx = self._zeros_state(input, batch_sizes[0] if torch.jit.is_tracing() else int(batch_sizes[0]))
                hx = hx if is_lstm else hx[0]
            else:
                # Each batch of the hidden state should match the input sequence that the user believes
                # he/she is passing in.
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = None
            if input.dim() not in (2, 3):
                name = {"LSTM": "LSTM", "GRU": "GRU"}.get(self.mode, "RNN")
                tail = "D tensor instead" if name == "RNN" else "D instead"
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}{tail}")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is None:
                hx = self._zeros_state(input, input.size(batch_dim))
                hx = hx if is_lstm else hx[0]
            else:
                self._check_hidden_rank(hx, is_batched)
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if is_lstm else hx.unsqueeze(1)
        self.check_forward_args(input, hx, batch_sizes)

        if batch_sizes is None:
            # [T, B, I] time-major == packed layout with batch_sizes = [B] * T
            x = input.transpose(0, 1) if self.batch_first else input
            T, B = x.shape[0], x.shape[1]
            if T == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            packed_x, steps = x.reshape(T * B, x.shape[2]), functional.time_major_batch_sizes(T, B)
        else:
            packed_x, steps = input, batch_sizes

        h0, c0 = (hx[0], hx[1]) if is_lstm else (hx, None)
        output, h_n, c_n = functional.recurrence(
            self.mode,
            packed_x,
            steps,
            h0,
            c0,
            self._layer_weights(),
            self.num_layers,
            self.dropout,
            self.training,
            self.bidirectional,
            batch_sizes is not None,
        )
        hidden = (h_n, c_n) if is_lstm else h_n

        if isinstance(orig_input, PackedSequence):
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), self.permute_hidden(
                hidden, unsorted_indices
            )
        output = output.view(T, B, output.shape[-1])  # [T, B, D*Hin]
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if is_lstm else hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)


class RNN(_RecurrentMixin, nn.RNN):
    __doc__ = "pyrnn drop-in for :class:`torch.nn.RNN` (tanh or relu); same arguments, pyrnn kernels.\n\n" + (
        nn.RNN.__doc__ or ""
    )


class LSTM(_RecurrentMixin, nn.LSTM):
    __doc__ = "pyrnn drop-in for :class:`torch.nn.LSTM` (with proj_size); same arguments, pyrnn kernels.\n\n" + (
        nn.LSTM.__doc__ or ""
    )


class GRU(_RecurrentMixin, nn.GRU):
    __doc__ = "pyrnn drop-in for :class:`torch.nn.GRU`; same arguments, pyrnn kernels.\n\n" + (nn.GRU.__doc__ or "")


# ---------------------------------------------------------------------------------------------------- cells


def _cell_step(mode: str, cell: nn.Module, input: Tensor, h0: Tensor, c0: Optional[Tensor]):
    # One step. input: [B, I], h0/c0: [B, H]. Returns h and c (LSTM) or None.
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    p = cell._parameters
    if all(n in p for n in names):  # straight from the registry: nn.Module.__getattr__ costs ~0.4 us a name
        w = functional.LayerWeights(*(p[n] for n in names))
    else:  # parametrized or replaced weights (torch.nn.utils.parametrize, weight_norm): as attributes
        w = functional.LayerWeights(*(getattr(cell, n) for n in names))
    return functional.cell(mode, input, h0, c0, w)


class RNNCell(_Scriptable, nn.RNNCell):
    __doc__ = "pyrnn drop-in for :class:`torch.nn.RNNCell`.\n\n" + (nn.RNNCell.__doc__ or "")

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if input.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        is_batched = input.dim() == 2
        input = input if is_batched else input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        else:
            hx = hx if is_batched else hx.unsqueeze(0)
        check_cell(input, hx, "0", self.input_size, self.hidden_size)
        mode = "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"
        h, _ = _cell_step(mode, self, input, hx, None)
        return h if is_batched else h.squeeze(0)


class GRUCell(_Scriptable, nn.GRUCell):
    __doc__ = "pyrnn drop-in for :class:`torch.nn.GRUCell`.\n\n" + (nn.GRUCell.__doc__ or "")

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        input = input if is_batched else input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        else:
            hx = hx if is_batched else hx.unsqueeze(0)
        check_cell(input, hx, "0", self.input_size, self.hidden_size)
        h, _ = _cell_step("GRU", self, input, hx, None)
        return h if is_batched else h.squeeze(0)


class LSTMCell(_Scriptable, nn.LSTMCell):
    __doc__ = "pyrnn drop-in for :class:`torch.nn.LSTMCell`.\n\n" + (nn.LSTMCell.__doc__ or "")

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        input = input if is_batched else input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        else:
            hx = hx if is_batched else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        check_cell(input, hx[0], "0", self.input_size, self.hidden_size)
        check_cell(input, hx[1], "1", self.input_size, self.hidden_size)
        h, c = _cell_step("LSTM", self, input, hx[0], hx[1])
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))
