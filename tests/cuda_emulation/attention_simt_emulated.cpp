// The CUDA-core attention kernels, every dtype, for the emulator.
#include "attention/cuda/attention_simt_bf16.cu"
#include "attention/cuda/attention_simt_f16.cu"
#include "attention/cuda/attention_simt_f32.cu"
#include "attention/cuda/attention_simt_f64.cu"
