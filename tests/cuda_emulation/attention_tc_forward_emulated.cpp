// The tensor-core attention forward, fp16 and bf16, for the emulator.
#include "attention/cuda/attention_tc_forward_bf16.cu"
#include "attention/cuda/attention_tc_forward_f16.cu"
