// The TorchScript graph passes behind packed models (core/packed_model.h): where a method reads its
// tensor attributes, and each method of a class prepared so that every use of a ternary weight
// stands in that method's own graph.
//
// The rewrite works method by method, on the graphs of the model's class types, as TorchScript
// stores them: a fully inlined forward would be one function as large as the model, which
// TorchScript needs hundreds of MiB to compile when the file is loaded (a 4-layer transformer
// encoder: 320 MiB). Modules of one configuration share a class type, so a rewritten method serves
// every instance of its type. For the same reason a function called with ternary weights becomes a
// method of its own rather than being inlined into its caller.
#pragma once
#include <torch/csrc/jit/ir/ir.h>
#include <torch/script.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ttq {

// A read of a tensor attribute in a method's graph, at `path` from the method's `self`
// ("weight", "out_proj.weight").
struct Read {
  torch::jit::Node* node;
  std::string path;
};

// "prefix.name", or "name" when the prefix is the root's "".
std::string join_path(const std::string& prefix, const std::string& name);

// Inserts `op(inputs)` (a qualified name, "ttq::conv2d_int8") at the graph's insertion point; its
// one output is a tensor.
torch::jit::Value* insert_op(torch::jit::Graph& graph, const char* op, const std::vector<torch::jit::Value*>& inputs);

// Every read of a tensor attribute in `graph` (a method: input 0 is `self`), nested blocks included.
std::vector<Read> reads_in(torch::jit::Graph& graph);

// A method of a class type, prepared for the rewrite, and its reads of ternary weights.
struct MethodGraph {
  std::shared_ptr<torch::jit::Graph> graph;
  std::vector<Read> reads;
};

// The methods of `type` that read a weight for which `ternary(path from self)` holds, prepared:
// method calls passing such a weight inlined (nn.Conv2d's _conv_forward), function calls passing
// one turned into new methods of `type` that read it themselves, the fused transformer fast paths
// reading one turned down, and Optional refinements of one folded, until none is left. A method
// whose graph still changes after 1000 rounds is a runtime error naming it, never a hang.
std::vector<MethodGraph> prepare_methods(const c10::ClassTypePtr& type,
                                         const std::function<bool(const std::string&)>& ternary);

}  // namespace ttq
