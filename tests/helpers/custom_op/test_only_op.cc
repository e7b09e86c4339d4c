// ExportArchiveTestOnly: returns its input unchanged.
//
// An op that no TensorFlow, TF Serving or pip package registers: the serving-check
// tests build this file into a shared object and load it only in the test process
// (helpers/check_models.py: load_test_only_op), so a model using it exports and
// runs there, while the serving-contract process, which like tensorflow_model_server
// never loads it, must report it missing. (TF Text and TF-DF ops cannot play this
// part: the stock model server links them, and the check loads them too.)
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;

class ExportArchiveTestOnlyOp : public OpKernel {
 public:
  explicit ExportArchiveTestOnlyOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    // Forwards the input buffer: no copy needed for an identity.
    context->set_output(0, context->input(0));
  }
};

}  // namespace

REGISTER_OP("ExportArchiveTestOnly")
    .Input("x: float")
    .Output("y: float")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

REGISTER_KERNEL_BUILDER(Name("ExportArchiveTestOnly").Device(::tensorflow::DEVICE_CPU),
                        ExportArchiveTestOnlyOp);
