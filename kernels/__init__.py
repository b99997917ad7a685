"""pyrnn's GPU kernels in Triton, installed as ``pyrnn.kernels`` (never as a top-level ``kernels``).

recurrence_triton.py holds the shared time-loop kernels over row blocks (one launch per sequence, or per
step), resident_triton.py the weight-resident persistent kernels over unit blocks (W_hh in registers),
{lstm,gru,rnn}_triton.py the cell math (forward and backward side by side), triton_host.py the launchers and
the choice between kernels, host_common.py what the Triton and CUDA C++ backends share on the host. Importing this package does not import triton; triton_host does.
"""
