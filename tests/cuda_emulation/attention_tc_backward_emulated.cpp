// The tensor-core attention backward, fp16 and bf16, for the emulator.
#include "attention/cuda/attention_tc_backward_bf16.cu"
#include "attention/cuda/attention_tc_backward_f16.cu"
