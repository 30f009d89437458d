// csrc/attention/cuda/attention_delta.cu for the emulator.
#include "attention/cuda/attention_delta.cu"
