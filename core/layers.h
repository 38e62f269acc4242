// Which tensors of a TorchScript module get ternarized, and how to reach them by name.
#pragma once
#include <torch/script.h>

#include <string>
#include <vector>

namespace ttq {

// The user's layer selection (flags --include/--exclude/--quantize-first/--quantize-last).
struct Selection {
  std::vector<std::string> include;  // ECMAScript regexes, searched in the weight's name
  std::vector<std::string> exclude;
  bool quantize_first = false;       // by default the first and the last layer stay FP
  bool quantize_last = false;
  // When not empty, exactly these weights (a budget's choice, --max-drop/--target-ratio: chosen
  // among those the fields above leave, so they are not applied again).
  std::vector<std::string> only;
};

// A quantizable weight: a floating-point parameter that `forward` uses as the weights of a
// convolution, a linear or matrix product, an RNN or an embedding, also through views and slices.
struct Candidate {
  std::string name;  // qualified parameter name, e.g. "layer1.0.conv1.weight"
  torch::Tensor weight;
  bool selected = false;
  bool normalized = false;  // a normalization (BatchNorm, LayerNorm, ...) takes the layer's output directly
};

// Every quantizable weight in forward order: the order in which the inlined `forward` graph
// first reads it. A module without a `forward` ttq can read falls back to every floating parameter
// of rank >= 2, in registration order, with a warning.
std::vector<Candidate> find_candidates(const torch::jit::Module& module);

// A tensor that stays float, and the op whose use keeps it so: a floating parameter of rank >= 2
// that is not a candidate ("add" for a position embedding, "mul" for a layer scale, "cat" for a
// class token, or "unused"), or a ternary layer a packed model keeps float ("embedding", "list"
// for an RNN's weights, "slice" for an attention projection read in parts).
struct KeptFloat {
  std::string name;
  std::vector<int64_t> shape;
  std::string use;
};
struct LayerUses {
  std::vector<Candidate> candidates;  // forward order, as find_candidates
  std::vector<KeptFloat> excluded;    // registration order
};
LayerUses analyze_layers(const torch::jit::Module& module);

// Marks the candidates the selection picks and returns how many; throws a usage error for an
// invalid regex.
size_t mark_selected(std::vector<Candidate>& candidates, const Selection& selection);

// mark_selected, and an error when nothing is selected: an input error when the model has
// nothing to quantize, a usage error when the flags leave nothing.
void apply_selection(std::vector<Candidate>& candidates, const Selection& selection);

// Where a named tensor lives: its owning submodule and attribute name. Resolving once and setting
// many times keeps the training step free of string work.
// A torch.nn RNN also reads its weights from the list _flat_weights: setting one of them sets its
// place in that list too.
struct ParameterSlot {
  torch::jit::Module owner;
  std::string attribute;
  std::vector<std::pair<c10::List<c10::IValue>, size_t>> list_places;
  void set(const torch::Tensor& value) {
    owner.setattr(attribute, value);
    for (auto& [list, index] : list_places) list.set(index, value);
  }
};
ParameterSlot find_slot(const torch::jit::Module& module, const std::string& qualified_name);

// Every tensor a module holds, with its qualified name: parameters, then buffers (recursively), the
// order archives store them in.
struct ModuleTensor {
  std::string name;
  torch::Tensor value;
  bool is_parameter;
};
std::vector<ModuleTensor> module_tensors(const torch::jit::Module& module);

// Replaces a parameter (by qualified name) with any tensor, including one computed from other
// tensors: autograd then flows through the module's forward into those tensors.
void set_parameter(torch::jit::Module& module, const std::string& qualified_name,
                   const torch::Tensor& value);

}  // namespace ttq
