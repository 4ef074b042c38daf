// Guided backpropagation's ReLU (pytorch-grad-cam's GuidedBackpropReLU): the forward pass
// of a ReLU, a backward pass that lets through only positive gradients where the input was
// positive. A custom autograd function, which tch's generated API cannot define; exposed
// with C linkage like fused_conv.cpp, tensors crossing as `at::Tensor*`.

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// pytorch-grad-cam's operations, in its order: addcmul into zeros with float masks.
struct GuidedRelu : public torch::autograd::Function<GuidedRelu> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input) {
    at::Tensor positive = input.gt(0).type_as(input);
    ctx->save_for_backward({input});
    return at::addcmul(at::zeros(input.sizes(), input.options()), input, positive);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor input = ctx->get_saved_variables()[0];
    const at::Tensor& grad = grad_outputs[0];
    at::Tensor positive_input = input.gt(0).type_as(grad);
    at::Tensor positive_grad = grad.gt(0).type_as(grad);
    at::Tensor zeros = at::zeros(input.sizes(), input.options());
    return {at::addcmul(zeros, at::addcmul(zeros, grad, positive_input), positive_grad)};
  }
};

}  // namespace

extern "C" {

// *out = the guided ReLU of x, recorded for autograd. nullptr on success, else a message
// (free it with gcs_free_error): nothing unwinds across extern "C".
char* gcs_guided_relu(const at::Tensor* x, at::Tensor** out) {
  try {
    *out = new at::Tensor(GuidedRelu::apply(*x));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  } catch (...) {
    return strdup("libtorch threw something other than a std::exception");
  }
}

}  // extern "C"
