// oneDNN convolutions with their ReLU and residual add fused in (post-ops), as PyTorch's
// freezing pass for torch.compile runs them on CPU: libtorch registers them as
// `mkldnn::_convolution_pointwise` operators, which tch's generated API does not reach.
// They are called here through the dispatcher, and exposed to Rust with C linkage; tensors
// cross as `at::Tensor*`, as torch-sys passes them (tch's C_tensor).
//
// Every function answers nullptr on success, or a message (free it with
// gcs_free_error) for the exception libtorch threw.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace {

using Unary = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                         c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t,
                         c10::string_view, c10::List<std::optional<at::Scalar>>,
                         std::optional<c10::string_view>);

using BinaryInPlace = at::Tensor&(at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const std::optional<at::Tensor>&, c10::IntArrayRef,
                                  c10::IntArrayRef, c10::IntArrayRef, int64_t,
                                  c10::string_view, std::optional<at::Scalar>,
                                  std::optional<c10::string_view>,
                                  c10::List<std::optional<at::Scalar>>,
                                  std::optional<c10::string_view>);

const c10::TypedOperatorHandle<Unary>& unary() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mkldnn::_convolution_pointwise", "")
                             .typed<Unary>();
  return op;
}

const c10::TypedOperatorHandle<BinaryInPlace>& binary_in_place() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mkldnn::_convolution_pointwise_", "binary")
                             .typed<BinaryInPlace>();
  return op;
}

// The operators want the bias in the activations' type (bf16 runs keep an f32 bias).
std::optional<at::Tensor> bias_for(const at::Tensor* bias, const at::Tensor& x) {
  if (bias == nullptr) return std::nullopt;
  if (bias->scalar_type() == x.scalar_type()) return *bias;
  return bias->to(x.scalar_type());
}

char* error_of(const std::exception& e) { return strdup(e.what()); }

// Nothing may unwind across extern "C": anything thrown that is not a std::exception.
char* unknown_error() { return strdup("libtorch threw something other than a std::exception"); }

}  // namespace

extern "C" {

// *out = attr(conv(x, w) + bias), attr being "relu" or "none".
char* gcs_conv_pointwise(const at::Tensor* x, const at::Tensor* w, const at::Tensor* bias,
                         const int64_t* padding, const int64_t* stride, int64_t groups,
                         const char* attr, at::Tensor** out) {
  try {
    const int64_t dilation[2] = {1, 1};
    at::Tensor y = unary().call(*x, *w, bias_for(bias, *x), c10::IntArrayRef(padding, 2),
                                c10::IntArrayRef(stride, 2), c10::IntArrayRef(dilation, 2),
                                groups, attr, c10::List<std::optional<at::Scalar>>(),
                                std::nullopt);
    *out = new at::Tensor(std::move(y));
    return nullptr;
  } catch (const std::exception& e) {
    return error_of(e);
  } catch (...) {
    return unknown_error();
  }
}

// accumulator = relu(conv(x, w) + bias + accumulator), written into accumulator: a
// residual block's last convolution, its shortcut and its final ReLU in one oneDNN call.
char* gcs_conv_add_relu_(const at::Tensor* x, at::Tensor* accumulator, const at::Tensor* w,
                         const at::Tensor* bias, const int64_t* padding, const int64_t* stride,
                         int64_t groups) {
  try {
    const int64_t dilation[2] = {1, 1};
    binary_in_place().call(*accumulator, *x, *w, bias_for(bias, *x),
                           c10::IntArrayRef(padding, 2), c10::IntArrayRef(stride, 2),
                           c10::IntArrayRef(dilation, 2), groups, "add", at::Scalar(1.0),
                           "relu", c10::List<std::optional<at::Scalar>>(), std::nullopt);
    return nullptr;
  } catch (const std::exception& e) {
    return error_of(e);
  } catch (...) {
    return unknown_error();
  }
}

void gcs_free_error(char* message) { std::free(message); }

}  // extern "C"
