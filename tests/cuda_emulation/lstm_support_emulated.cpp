// The LSTM argument checks and weight-gradient GEMMs the CUDA entry uses
// (csrc/lstm/lstm_checks.cpp, lstm_gradients.cpp).
#include "lstm/lstm_checks.cpp"
#include "lstm/lstm_gradients.cpp"
