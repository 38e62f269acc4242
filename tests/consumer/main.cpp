// Loads a model through the installed C++ API and prints its output for an all-ones input of the
// given shape, one value per line: a .ttqz archive restored to float32 (ttq::load_archive), or with
// --packed any ttq model running packed (ttq::load_packed).
#include <formats/archive.h>
#include <formats/model_file.h>

#include <cstring>
#include <iostream>

int main(int argc, char** argv) {
  const bool packed = argc > 1 && std::strcmp(argv[1], "--packed") == 0;
  if (argc < 3 + packed) {
    std::cerr << "usage: consumer [--packed] MODEL DIM...\n";
    return 2;
  }
  std::vector<int64_t> shape;
  for (int i = 2 + packed; i < argc; ++i) shape.push_back(std::stoll(argv[i]));
  torch::jit::Module module = packed ? ttq::load_packed(argv[1 + packed]) : ttq::load_archive(argv[1]);
  module.eval();
  torch::NoGradGuard no_grad;
  const auto y = module.forward({torch::ones(shape)}).toTensor().flatten();
  std::cout.precision(9);
  for (int64_t i = 0; i < y.numel(); ++i) std::cout << y[i].item<float>() << '\n';
}
