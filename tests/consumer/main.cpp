// Restores a .ttqz archive through the installed C++ API and prints the model's output for an
// all-ones input of the given shape, one value per line.
#include <formats/archive.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: consumer ARCHIVE DIM...\n";
    return 2;
  }
  std::vector<int64_t> shape;
  for (int i = 2; i < argc; ++i) shape.push_back(std::stoll(argv[i]));
  torch::jit::Module module = ttq::load_archive(argv[1]);
  module.eval();
  torch::NoGradGuard no_grad;
  const auto y = module.forward({torch::ones(shape)}).toTensor().flatten();
  std::cout.precision(9);
  for (int64_t i = 0; i < y.numel(); ++i) std::cout << y[i].item<float>() << '\n';
}
