// core/graph_passes: reads of tensor attributes, and methods prepared for the packed rewrite on the
// class types of real scripted models (torchvision's ResNet-18 and ViT, an LSTM tagger, a transformer
// text classifier): afterwards no call and no fused fast path takes a ternary weight.
#include "catch.h"
#include "helpers.h"

#include <torch/csrc/jit/api/function_impl.h>

#include <set>

#include "core/graph_passes.h"

using namespace ttq;
using ttq::test::fixture;

namespace {

bool is_weight(const std::string& path) { return path.size() >= 6 && path.rfind("weight") == path.size() - 6; }

std::vector<std::string> paths_of(const std::vector<Read>& reads) {
  std::vector<std::string> out;
  for (const auto& r : reads) out.push_back(r.path);
  return out;
}

// The kinds of the nodes that use a read's value.
std::set<std::string> users_of(const Read& read) {
  std::set<std::string> out;
  for (const auto& use : read.node->output()->uses()) out.insert(use.user->kind().toQualString());
  return out;
}

// Each class type of the module's tree once.
std::vector<c10::ClassTypePtr> class_types(const torch::jit::Module& root) {
  std::vector<c10::ClassTypePtr> out;
  std::set<const c10::ClassType*> seen;
  for (const auto& m : root.modules())
    if (seen.insert(m.type().get()).second) out.push_back(m.type());
  return out;
}

}  // namespace

TEST_CASE("paths join below the root") {
  CHECK(join_path("", "weight") == "weight");
  CHECK(join_path("self_attn", "out_proj") == "self_attn.out_proj");
}

TEST_CASE("reads of tensor attributes are found with their paths, submodules walked through") {
  const auto linear = fixture("one_layer.pt");
  auto reads = reads_in(*linear.get_method("forward").graph());
  CHECK(paths_of(reads) == std::vector<std::string>{"weight", "bias"});
  CHECK(users_of(reads[0]) == std::set<std::string>{"aten::linear"});
  // The small CNN's forward calls its layers' methods: it reads no tensor itself.
  CHECK(reads_in(*fixture("small_cnn.pt").get_method("forward").graph()).empty());
}

TEST_CASE("a method call passing a ternary weight is inlined (nn.Conv2d's _conv_forward)") {
  const auto cnn = fixture("small_cnn.pt");
  const auto conv = cnn.attr("conv1").toModule().type();
  const auto before = reads_in(*torch::jit::toGraphFunction(conv->getMethod("forward")).graph());
  REQUIRE(paths_of(before) == std::vector<std::string>{"weight", "bias"});
  CHECK(users_of(before[0]) == std::set<std::string>{"prim::CallMethod"});
  const auto prepared = prepare_methods(conv, is_weight);
  REQUIRE(prepared.size() == 1);
  REQUIRE(paths_of(prepared[0].reads) == std::vector<std::string>{"weight"});
  CHECK(users_of(prepared[0].reads[0]) == std::set<std::string>{"aten::conv2d"});
  CHECK(prepare_methods(conv, [](const std::string&) { return false; }).empty());
}

TEST_CASE("after preparation no call and no fused fast path takes a ternary weight, in any class") {
  for (const char* name : {"resnet18.pt", "vit_small.pt", "lstm_tagger.pt", "text_classifier.pt"}) {
    CAPTURE(name);
    const auto model = fixture(name);
    size_t weight_reads = 0;
    for (const auto& type : class_types(model)) {
      for (const auto& method : prepare_methods(type, is_weight)) {
        for (const auto& read : method.reads) {
          CAPTURE(type->name()->qualifiedName(), read.path);
          ++weight_reads;
          for (const auto& user : users_of(read)) {
            CHECK(user != "prim::CallMethod");
            CHECK(user != "prim::CallFunction");
            CHECK(user != "aten::_transformer_encoder_layer_fwd");
            CHECK(user != "aten::_native_multi_head_attention");
          }
        }
      }
    }
    CHECK(weight_reads > 0);
  }
}
