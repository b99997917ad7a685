"""TorchScript twins of pyrnn's modules: what `torch.jit.script` compiles in their place.

pyrnn's modules run Python TorchScript cannot compile (PackedSequence handling, the eager fast paths, pyrnn.composite
for the transforms). `torch.jit.script(model)` asks every module for `__prepare_scriptable__()` first; pyrnn's answer
with a twin from here: an instance of a subclass of the same torch.nn class that shares the module's parameters,
buffers and settings (no copy: an optimizer stepping the original moves the scripted model too) and whose forward
is TorchScript calling pyrnn's registered ops (`torch.ops.pyrnn.*`), forward and backward on pyrnn's kernels.
torch.nn's own input checks (check_forward_args and the like, written for TorchScript) run as they do in torch.nn's
scripted forward.

The layer twins take a padded tensor or a PackedSequence, as torch.nn's scripted layers do (two overloads of forward,
one implementation). What they leave out: forward-mode AD and autocast's dtype handling (pyrnn.functional's), and C++
deployment: the ops are registered from Python, so a scripted model runs where pyrnn is imported, not in libtorch
alone.

Shapes as in pyrnn.functional: x [N, I] packed time-major (a padded [T, B, I] input has batch_sizes [B] * T).
"""

import sys
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._jit_internal import _overload_method
from torch.nn.utils.rnn import PackedSequence


def _requires_grad(tensors: List[Optional[Tensor]]) -> bool:
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def _layer_direction(mode: str, x: Tensor, batch_sizes: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor,
                     w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                     reverse: bool) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer-direction op. x: [N, I], h0: [B, Hin], c0: [B, H]. Returns y [N, Hin], h_n [B, Hin], c_n or None."""
    # The workspace only where a backward may follow (pyrnn.functional's rule).
    save = torch.is_grad_enabled() and _requires_grad([x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr])
    if mode == "LSTM":
        assert c0 is not None
        y, h_n, c_n, _cell, _proj_in, _gates, _h_prev = torch.ops.pyrnn.lstm_layer(
            x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, batch_sizes, reverse, save)
        return y, h_n, c_n
    if mode == "GRU":
        y, h_n, _gates, _gh_n, _h_prev = torch.ops.pyrnn.gru_layer(x, w_ih, b_ih, b_hh, w_hh, h0, batch_sizes, reverse,
                                                                    save)
        return y, h_n, None
    y, h_n, _h_prev = torch.ops.pyrnn.rnn_layer(x, w_ih, b_ih, b_hh, w_hh, h0, batch_sizes, reverse, mode == "RNN_RELU",
                                                save)
    return y, h_n, None


def _layers(mode: str, x: Tensor, batch_sizes: Tensor, hx: Tensor, cx: Optional[Tensor], flat_weights: List[Tensor],
            has_bias: bool, has_proj: bool, num_layers: int, bidirectional: bool, dropout: float, training: bool
            ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """All layers and directions (pyrnn.functional.recurrence). x: [N, I]; hx: [L*D, B, Hin]; cx: [L*D, B, H];
    flat_weights in torch.nn's order (w_ih, w_hh, [b_ih, b_hh], [w_hr] per layer-direction)."""
    if x.device.type == "cpu" and (x.dtype == torch.bfloat16 or x.dtype == torch.float16):
        # The CPU kernels compute half types in float32, as torch does; gradients flow back through the casts.
        c32: Optional[Tensor] = None
        if cx is not None:
            c32 = cx.float()
        out, h_n, c_n = _layers_in_dtype(mode, x.float(), batch_sizes, hx.float(), c32,
                                         [w.float() for w in flat_weights], has_bias, has_proj, num_layers,
                                         bidirectional, dropout, training)
        c_half: Optional[Tensor] = None
        if c_n is not None:
            c_half = c_n.to(x.dtype)
        return out.to(x.dtype), h_n.to(x.dtype), c_half
    return _layers_in_dtype(mode, x, batch_sizes, hx, cx, flat_weights, has_bias, has_proj, num_layers, bidirectional,
                            dropout, training)


def _layers_in_dtype(mode: str, x: Tensor, batch_sizes: Tensor, hx: Tensor, cx: Optional[Tensor],
                     flat_weights: List[Tensor], has_bias: bool, has_proj: bool, num_layers: int, bidirectional: bool,
                     dropout: float, training: bool) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    directions = 2 if bidirectional else 1
    per_direction = 2 + (2 if has_bias else 0) + (1 if has_proj else 0)
    h_n: List[Tensor] = []
    c_n: List[Tensor] = []
    layer_input = x
    for layer in range(num_layers):
        outputs: List[Tensor] = []
        for d in range(directions):
            k = layer * directions + d
            w = flat_weights[k * per_direction:(k + 1) * per_direction]
            b_ih: Optional[Tensor] = None
            b_hh: Optional[Tensor] = None
            w_hr: Optional[Tensor] = None
            c0: Optional[Tensor] = None
            if has_bias:
                b_ih, b_hh = w[2], w[3]
            if has_proj:
                w_hr = w[per_direction - 1]
            if cx is not None:
                c0 = cx[k]
            y, h, c = _layer_direction(mode, layer_input, batch_sizes, hx[k], c0, w[0], w[1], b_ih, b_hh, w_hr, d == 1)
            outputs.append(y)
            h_n.append(h)
            if c is not None:
                c_n.append(c)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, 1)  # [N, D*Hin]
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, True)
    cell_state: Optional[Tensor] = None
    if cx is not None:
        cell_state = torch.stack(c_n)
    return layer_input, torch.stack(h_n), cell_state


def _check_input_rank(name: str, input: Tensor) -> None:
    if input.dim() != 2 and input.dim() != 3:
        tail = "D tensor instead" if name == "RNN" else "D instead"
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}{tail}")


def _check_state_rank(state: Tensor, is_batched: bool) -> None:
    if is_batched and state.dim() != 3:
        raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {state.dim()}-D tensor")
    if not is_batched and state.dim() != 2:
        raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {state.dim()}-D tensor")


class _ScriptedLayers:
    """What the layer twins share (methods: TorchScript passes no module to a free function)."""

    def _all_layers(self, x: Tensor, batch_sizes: Tensor, hx: Tensor, cx: Optional[Tensor]
                    ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        return _layers(self.mode, x, batch_sizes, hx, cx, self._flat_weights, self.bias, self.proj_size > 0,
                       self.num_layers, self.bidirectional, float(self.dropout), self.training)

    def _padded(self, input: Tensor, hx: Tensor, cx: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """A padded batched input [T, B, I] ([B, T, I] batch_first) through all layers: output in its layout."""
        x = input.transpose(0, 1) if self.batch_first else input
        T, B = x.size(0), x.size(1)
        if T == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        out, h_n, c_n = self._all_layers(x.reshape(T * B, x.size(2)), torch.full([T], B, dtype=torch.long), hx, cx)
        output = out.view(T, B, out.size(-1))
        return (output.transpose(0, 1) if self.batch_first else output), h_n, c_n

    def _zeros(self, input: Tensor, size: int) -> Tensor:
        directions = 2 if self.bidirectional else 1
        batch = input.size(0 if self.batch_first else 1)
        return torch.zeros(self.num_layers * directions, batch, size, dtype=input.dtype, device=input.device)

    def _packed_zeros(self, data: Tensor, batch_sizes: Tensor, size: int) -> Tensor:
        directions = 2 if self.bidirectional else 1
        return torch.zeros(self.num_layers * directions, int(batch_sizes[0]), size, dtype=data.dtype,
                           device=data.device)

    def _packed_single_state(self, input: PackedSequence, hx: Optional[Tensor]) -> Tuple[PackedSequence, Tensor]:
        # GRU and RNN over a PackedSequence: data [N, I] time-major, hx in the caller's batch order.
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is None:
            h0 = self._packed_zeros(data, batch_sizes, self.hidden_size)
        else:
            h0 = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(data, h0, batch_sizes)
        out, h_n, _ = self._all_layers(data, batch_sizes, h0, None)
        return (PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices),
                self.permute_hidden(h_n, unsorted_indices))

    def _single_state(self, input: Tensor, hx: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        # GRU and RNN: one state tensor.
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is None:
            h0 = self._zeros(input, self.hidden_size)
        else:
            _check_state_rank(hx, is_batched)
            h0 = hx if is_batched else hx.unsqueeze(1)
        self.check_forward_args(input, h0, None)
        output, h_n, _ = self._padded(input, h0, None)
        if not is_batched:
            return output.squeeze(batch_dim), h_n.squeeze(1)
        return output, h_n


class ScriptedLSTM(_ScriptedLayers, nn.LSTM):
    """The twin of an LSTM scripted alone: padded tensors (a module scripted at the top has one forward; torch.nn's
    LSTM, whose forward is overloaded, does not script alone at all)."""

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        return self._tensor_forward(input, hx)

    def _tensor_forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]]
                        ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        _check_input_rank("LSTM", input)
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is None:
            h0 = self._zeros(input, self.proj_size if self.proj_size > 0 else self.hidden_size)
            c0 = self._zeros(input, self.hidden_size)
        else:
            h0, c0 = hx
            want = 3 if is_batched else 2
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            if h0.dim() != want or c0.dim() != want:
                raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                                   f"({h0.dim()}-D, {c0.dim()}-D) tensors")
            if not is_batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        self.check_forward_args(input, (h0, c0), None)
        output, h_n, c_n = self._padded(input, h0, c0)
        assert c_n is not None
        if not is_batched:
            return output.squeeze(batch_dim), (h_n.squeeze(1), c_n.squeeze(1))
        return output, (h_n, c_n)


class ScriptedPackableLSTM(ScriptedLSTM):
    """The twin of an LSTM inside a scripted model: padded tensors or a PackedSequence, through torch.nn's two
    overloads of forward (the caller's argument type picks one when the parent compiles)."""

    @_overload_method
    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        pass

    @_overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]] = None  # noqa: F811
                ) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
        pass

    def forward(self, input, hx=None):  # noqa: F811
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                h0 = self._packed_zeros(data, batch_sizes, self.proj_size if self.proj_size > 0 else self.hidden_size)
                c0 = self._packed_zeros(data, batch_sizes, self.hidden_size)
            else:
                h0, c0 = self.permute_hidden(hx, sorted_indices)
            self.check_forward_args(data, (h0, c0), batch_sizes)
            out, h_n, c_n = self._all_layers(data, batch_sizes, h0, c0)
            assert c_n is not None
            return (PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden((h_n, c_n), unsorted_indices))
        return self._tensor_forward(input, hx)


class ScriptedGRU(_ScriptedLayers, nn.GRU):
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        _check_input_rank("GRU", input)
        return self._single_state(input, hx)


class ScriptedRNN(_ScriptedLayers, nn.RNN):
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        _check_input_rank("RNN", input)
        return self._single_state(input, hx)


class ScriptedPackableGRU(ScriptedGRU):
    @_overload_method
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        pass

    @_overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None  # noqa: F811
                ) -> Tuple[PackedSequence, Tensor]:
        pass

    def forward(self, input, hx=None):  # noqa: F811
        if isinstance(input, PackedSequence):
            return self._packed_single_state(input, hx)
        _check_input_rank("GRU", input)
        return self._single_state(input, hx)


class ScriptedPackableRNN(ScriptedRNN):
    @_overload_method
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        pass

    @_overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None  # noqa: F811
                ) -> Tuple[PackedSequence, Tensor]:
        pass

    def forward(self, input, hx=None):  # noqa: F811
        if isinstance(input, PackedSequence):
            return self._packed_single_state(input, hx)
        _check_input_rank("RNN", input)
        return self._single_state(input, hx)


def _cell(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
          b_hh: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """One step (pyrnn.functional.cell). x: [B, I], h0/c0: [B, H]. Returns h [B, H] and c [B, H] (LSTM) or None."""
    if x.device.type == "cpu" and (x.dtype == torch.bfloat16 or x.dtype == torch.float16):
        c32: Optional[Tensor] = None
        if c0 is not None:
            c32 = c0.float()
        b_ih32: Optional[Tensor] = None
        b_hh32: Optional[Tensor] = None
        if b_ih is not None:
            b_ih32 = b_ih.float()
        if b_hh is not None:
            b_hh32 = b_hh.float()
        h, c = _cell_in_dtype(mode, x.float(), h0.float(), c32, w_ih.float(), w_hh.float(), b_ih32, b_hh32)
        c_half: Optional[Tensor] = None
        if c is not None:
            c_half = c.to(x.dtype)
        return h.to(x.dtype), c_half
    return _cell_in_dtype(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh)


def _cell_in_dtype(mode: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                   b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    if x.device.type == "cpu" and (x.dtype == torch.float32 or x.dtype == torch.float64):
        save = torch.is_grad_enabled() and _requires_grad([x, h0, c0, w_ih, w_hh, b_ih, b_hh])
        h, c, _gates, _gh_n = torch.ops.pyrnn.cell(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, save)
        if mode == "LSTM":
            return h, c
        return h, None
    # Elsewhere (GPUs, half types) the layer op over one step.
    h, _h_n, c = _layer_direction(mode, x, torch.full([1], x.size(0), dtype=torch.long), h0, c0, w_ih, w_hh, b_ih,
                                  b_hh, None, False)
    return h, c


def _cell_input(name: str, input: Tensor) -> Tuple[Tensor, bool]:
    """A cell's input as [B, I], and whether it came batched."""
    if input.dim() != 1 and input.dim() != 2:
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    is_batched = input.dim() == 2
    return (input if is_batched else input.unsqueeze(0)), is_batched


def _cell_zeros(input: Tensor, hidden_size: int) -> Tensor:
    return torch.zeros(input.size(0), hidden_size, dtype=input.dtype, device=input.device)


def check_cell(input: Tensor, hx: Tensor, label: str, input_size: int, hidden_size: int) -> None:
    """torch.nn's cell checks of input [B, I] and one state [B, H], its messages (pyrnn.modules' cells too)."""
    if input.size(1) != input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {input_size}")
    if input.size(0) != hx.size(0):
        raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{label} batch size {hx.size(0)}")
    if hx.size(1) != hidden_size:
        raise RuntimeError(f"hidden{label} has inconsistent hidden_size: got {hx.size(1)}, expected {hidden_size}")


class _ScriptedSingleStateCell:
    """What GRUCell's and RNNCell's twins share."""

    def _single_state(self, name: str, mode: str, input: Tensor, hx: Optional[Tensor]) -> Tensor:
        input, is_batched = _cell_input(name, input)
        if hx is not None and hx.dim() != 1 and hx.dim() != 2:
            raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        if hx is None:
            h0 = _cell_zeros(input, self.hidden_size)
        else:
            h0 = hx if is_batched else hx.unsqueeze(0)
        check_cell(input, h0, "0", self.input_size, self.hidden_size)
        h, _ = _cell(mode, input, h0, None, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h if is_batched else h.squeeze(0)


class ScriptedLSTMCell(nn.LSTMCell):
    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        input, is_batched = _cell_input("LSTMCell", input)
        if hx is None:
            h0 = _cell_zeros(input, self.hidden_size)
            c0 = h0
        else:
            h0, c0 = hx
            if h0.dim() != 1 and h0.dim() != 2:
                raise ValueError(f"LSTMCell: Expected hx[0] to be 1D or 2D, got {h0.dim()}D instead")
            if c0.dim() != 1 and c0.dim() != 2:
                raise ValueError(f"LSTMCell: Expected hx[1] to be 1D or 2D, got {c0.dim()}D instead")
            if not is_batched:
                h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
        check_cell(input, h0, "0", self.input_size, self.hidden_size)
        check_cell(input, c0, "1", self.input_size, self.hidden_size)
        h, c = _cell("LSTM", input, h0, c0, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        assert c is not None
        if not is_batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c


class ScriptedGRUCell(_ScriptedSingleStateCell, nn.GRUCell):
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        return self._single_state("GRUCell", "GRU", input, hx)


class ScriptedRNNCell(_ScriptedSingleStateCell, nn.RNNCell):
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if self.nonlinearity != "tanh" and self.nonlinearity != "relu":
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        mode = "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"
        return self._single_state("RNNCell", mode, input, hx)


_TWINS = {"LSTM": ScriptedLSTM, "GRU": ScriptedGRU, "RNN": ScriptedRNN, "LSTMCell": ScriptedLSTMCell,
          "GRUCell": ScriptedGRUCell, "RNNCell": ScriptedRNNCell}
_PACKABLE = {ScriptedLSTM: ScriptedPackableLSTM, ScriptedGRU: ScriptedPackableGRU, ScriptedRNN: ScriptedPackableRNN}


def _scripted_alone() -> bool:
    """Whether torch.jit.script was called on the module being prepared itself rather than on a model holding it:
    torch's preparation walks the module tree with a memo of the modules done, empty at the top. Where torch's
    internals differ from that, False (the twin for inside a model, as torch.nn's layers script)."""
    frame = sys._getframe(1)
    for _ in range(6):
        if frame is None:
            return False
        if frame.f_code.co_name == "call_prepare_scriptable_func_impl":
            memo = frame.f_locals.get("memo")
            return isinstance(memo, dict) and not memo
        frame = frame.f_back
    return False


def twin(module: nn.Module) -> nn.Module:
    """The TorchScript twin of a pyrnn module: same class family, same parameter objects, settings and state. A
    subclass with a forward of its own is its own business: scripting compiles that forward as it is. A layer inside
    a model gets the twin with torch.nn's two overloads of forward (padded tensors and PackedSequence); one scripted
    by itself, whose compiled module needs a single forward, the padded one."""
    cls = _twin_class(module)
    if cls is None:
        return module
    if cls in _PACKABLE and not _scripted_alone():
        cls = _PACKABLE[cls]
    scripted = cls.__new__(cls)
    scripted.__dict__.update(module.__dict__)
    for registry in ("_parameters", "_buffers", "_modules"):  # own dicts, same tensors: registering on one is not
        scripted.__dict__[registry] = dict(module.__dict__[registry])  # registering on the other
    if isinstance(module, nn.RNNBase):
        scripted._flat_weights = list(module._flat_weights)
    return scripted


def _twin_class(module: nn.Module) -> Optional[type]:
    # The pyrnn class the module is (or derives from without replacing its forward).
    for base in type(module).__mro__:
        if base.__module__ == "pyrnn.modules" and base.__name__ in _TWINS:
            return _TWINS[base.__name__] if type(module).forward is base.forward else None
    return None
