"""pyrnn's GPU kernels in Triton, installed as ``pyrnn.kernels`` (never as a top-level ``kernels``).

recurrence_triton.py holds the shared time-loop kernels, {lstm,gru,rnn}_triton.py the cell math (forward
and backward side by side), triton_host.py the launchers, host_common.py what the Triton and CUDA C++
backends share on the host. Importing this package does not import triton; triton_host does.
"""
