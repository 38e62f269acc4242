// Data-parallel training across processes and machines on PyTorch's c10d (Gloo on CPU): the
// rendezvous, and the few collectives the trainer needs. The c10d headers stay in distributed.cpp.
#pragma once
#include <torch/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/choices.h"

namespace ttq {

enum class Backend { Gloo, Nccl };
inline constexpr Choice<Backend> kBackends[] = {{"gloo", Backend::Gloo, "TCP, on CPU"},
                                                {"nccl", Backend::Nccl, "NVIDIA GPUs (needs a LibTorch with CUDA)"}};
constexpr const auto& choices(Backend) { return kBackends; }

struct DistOptions {
  int rank = 0;
  int world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  Backend backend = Backend::Gloo;
  std::chrono::seconds timeout{120};

  bool distributed() const { return world_size > 1; }
};

// One process's membership in a group of `world_size` processes.
class Communicator {
 public:
  // Rendezvous at master_addr:master_port (rank 0 serves the store). Errors are one clear line:
  // usage errors for impossible options (an NCCL backend without CUDA, a rank out of range),
  // runtime errors when the others do not show up within the timeout.
  static std::shared_ptr<Communicator> connect(const DistOptions& options);
  ~Communicator();

  int rank() const;
  int world_size() const;
  // In place on every rank: the element-wise sum over ranks. Tensors of one dtype are packed into
  // buckets of up to kBucketBytes, one collective per bucket, as PyTorch DDP does.
  void sum(const std::vector<torch::Tensor>& tensors);
  // In place: rank 0's values everywhere, bucketed the same way.
  void broadcast(const std::vector<torch::Tensor>& tensors);
  // Throws a usage error naming the first value that is not the same on every rank (the ranks
  // were started with different data, model or options).
  void check_same(const std::vector<std::pair<std::string, int64_t>>& values);

  static constexpr int64_t kBucketBytes = 25 << 20;

 private:
  struct Impl;
  explicit Communicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ttq
