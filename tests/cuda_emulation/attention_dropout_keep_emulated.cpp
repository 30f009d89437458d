// csrc/attention/cuda/attention_dropout_keep.cu for the emulator.
#include "attention/cuda/attention_dropout_keep.cu"
