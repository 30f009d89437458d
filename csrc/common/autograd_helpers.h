// Pieces shared by the C++ autograd kernels (lstm_autograd.cpp,
// attention_autograd.cpp): each op's Autograd kernel calls the op below
// autograd directly when no gradient can be needed, else through a
// torch::autograd::Function whose backward calls the op's *_backward op.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <initializer_list>
#include <optional>

namespace pydl {
namespace autograd_helpers {

inline bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// A saved tensor (undefined where the optional argument was absent) as the
// optional argument again.
inline std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The reverse: an optional argument as a tensor, undefined where absent
// (what save_for_backward and the grad-mode checks take).
inline at::Tensor tensor_or_undefined(const std::optional<at::Tensor>& t) {
  return present(t) ? *t : at::Tensor();
}

inline at::Tensor or_zeros(const at::Tensor& grad, const at::Tensor& like) {
  return grad.defined() ? grad : at::zeros_like(like);
}

// Whether a call must go through its autograd Function. When not (no_grad,
// inference, nothing requiring grad), the kernels are called directly:
// Function::apply builds and drops a node, saved variables and its
// saved_data map even then (~3 us per call, measurable on a one-step call).
// A forward-mode tangent (level 0, as torch's own kernels check) always goes
// through the Function, which has no jvp and says so, rather than being
// dropped in silence.
inline bool needs_function(std::initializer_list<const at::Tensor*> tensors,
                           std::initializer_list<const std::optional<at::Tensor>*> optional) {
  bool any_requires_grad = false;
  for (const at::Tensor* t : tensors) {
    if (t->defined() && t->_fw_grad(/*level=*/0).defined()) return true;
    any_requires_grad = any_requires_grad || t->requires_grad();
  }
  for (const std::optional<at::Tensor>* t : optional) {
    if (!present(*t)) continue;
    if ((*t)->_fw_grad(/*level=*/0).defined()) return true;
    any_requires_grad = any_requires_grad || (*t)->requires_grad();
  }
  return any_requires_grad && at::GradMode::is_enabled();
}

inline bool requires_grad(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

// The backward ops have no derivative of their own: a second-order
// gradient (create_graph=True) through them is refused, where torch's
// fallback for a kernel without autograd would warn and return zeros.
inline void refuse_double_backward(const char* op, bool any_requires_grad) {
  TORCH_CHECK(!(any_requires_grad && at::GradMode::is_enabled()), op,
              ": double backward (a gradient of the gradient, create_graph=True) is not "
              "supported");
}

// An op's typed handle, looked up by name (callers keep it in a static).
template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

}  // namespace autograd_helpers
}  // namespace pydl
