// The attention argument checks the CUDA entry uses (csrc/attention/attention_checks.cpp).
#include "attention/attention_checks.cpp"
