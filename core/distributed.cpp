#include "core/distributed.h"

// The Gloo process group is compiled into Debian's libtorch_cpu; its header wants this switch.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "core/error.h"

namespace ttq {

struct Communicator::Impl {
  int rank = 0, world_size = 1;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;

  // Waits for a collective; a rank that died or hangs shows up here as an error or a timeout.
  void wait(const c10::intrusive_ptr<c10d::Work>& work) {
    try {
      work->wait();
    } catch (const std::exception& e) {
      throw runtime_error(fmt::format("rank {}: lost contact with the other ranks ({}); another rank failed, "
                                      "was stopped or timed out (see its own error)", rank, short_message(e.what())));
    }
  }

  // Runs `collective` on flat buffers of up to kBucketBytes, each packing consecutive tensors of
  // one dtype, and copies the results back into the tensors.
  template <typename Collective>
  void bucketed(const std::vector<torch::Tensor>& tensors, Collective collective) {
    size_t begin = 0;
    while (begin < tensors.size()) {
      size_t end = begin, bytes = 0;
      while (end < tensors.size() && tensors[end].scalar_type() == tensors[begin].scalar_type() &&
             (end == begin || bytes + tensors[end].nbytes() <= static_cast<size_t>(kBucketBytes))) {
        bytes += tensors[end].nbytes();
        ++end;
      }
      std::vector<torch::Tensor> flat;
      for (size_t i = begin; i < end; ++i) flat.push_back(tensors[i].detach().reshape(-1));
      std::vector<torch::Tensor> bucket{torch::cat(flat)};
      wait(collective(bucket));
      int64_t offset = 0;
      for (size_t i = begin; i < end; ++i) {
        const int64_t n = tensors[i].numel();
        tensors[i].detach().copy_(bucket[0].narrow(0, offset, n).view_as(tensors[i]));
        offset += n;
      }
      begin = end;
    }
  }
};

namespace {

// Which network interface Gloo uses: GLOO_SOCKET_IFNAME as in PyTorch; loopback for a local
// group; else the address this machine's hostname resolves to.
std::shared_ptr<::gloo::transport::Device> gloo_device(const DistOptions& o) {
  if (const char* name = std::getenv("GLOO_SOCKET_IFNAME"); name && *name)
    return c10d::ProcessGroupGloo::createDeviceForInterface(name);
  if (o.master_addr == "localhost" || o.master_addr.rfind("127.", 0) == 0)
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

// c10d reports a failed rendezvous through glog as well, in several lines of its own; ttq's
// error says the same in one line, so standard error is closed to them while connecting.
class QuietStderr {
 public:
  QuietStderr() {
    std::fflush(stderr);
    saved_ = dup(STDERR_FILENO);
    const int null = open("/dev/null", O_WRONLY);
    if (saved_ >= 0 && null >= 0) dup2(null, STDERR_FILENO);
    if (null >= 0) close(null);
  }
  ~QuietStderr() {
    std::fflush(stderr);
    if (saved_ >= 0) dup2(saved_, STDERR_FILENO), close(saved_);
  }
  QuietStderr(const QuietStderr&) = delete;
  QuietStderr& operator=(const QuietStderr&) = delete;

 private:
  int saved_ = -1;
};

// LibTorch 2.x serves the store through libuv unless told otherwise, and Debian builds it without
// libuv ("use_libuv was requested but PyTorch was build without libuv support"): ask for the
// classic server where the option exists (1.13 has no other).
template <class Options>
auto without_libuv(Options& options, int) -> decltype(options.useLibUV = false, void()) {
  options.useLibUV = false;
}
template <class Options>
void without_libuv(Options&, long) {}

// torchrun's agent serves the store at MASTER_PORT itself and says so to the ranks it launches; rank
// 0 then connects to it like the others instead of serving one.
bool launcher_serves_store() {
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  return agent && std::string(agent) == "True";
}

}  // namespace

Communicator::Communicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Communicator::~Communicator() = default;
int Communicator::rank() const { return impl_->rank; }
int Communicator::world_size() const { return impl_->world_size; }

std::shared_ptr<Communicator> Communicator::connect(const DistOptions& o) {
  if (o.backend == Backend::Nccl)
    throw usage_error("--dist-backend nccl needs a LibTorch built with CUDA and NCCL; this ttq's LibTorch "
                      "is CPU-only: use --dist-backend gloo");
  if (o.world_size < 1) throw usage_error(fmt::format("the world size must be at least 1, not {}", o.world_size));
  if (o.rank < 0 || o.rank >= o.world_size)
    throw usage_error(fmt::format("rank {} is outside 0..{} (world size {})", o.rank, o.world_size - 1, o.world_size));
  if (o.master_port < 1 || o.master_port > 65535)
    throw usage_error(fmt::format("master port {} is not a TCP port", o.master_port));

  auto impl = std::make_unique<Impl>();
  impl->rank = o.rank;
  impl->world_size = o.world_size;
  const std::string where = fmt::format("{}:{}", o.master_addr, o.master_port);
  const QuietStderr quiet;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(o.master_port);
    so.isServer = o.rank == 0 && !launcher_serves_store();
    so.numWorkers = static_cast<size_t>(o.world_size);
    so.timeout = o.timeout;
    without_libuv(so, 0);
    store = c10::make_intrusive<c10d::TCPStore>(o.master_addr, so);
  } catch (const std::exception& e) {
    throw runtime_error(fmt::format("rank {}: no rendezvous of {} ranks at {} within {} s ({})", o.rank, o.world_size,
                                    where, o.timeout.count(), short_message(e.what())));
  }
  try {
    auto go = c10d::ProcessGroupGloo::Options::create(o.timeout);
    go->devices.push_back(gloo_device(o));
    go->threads = 1;  // one collective at a time; the cores are for training
    impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world_size, go);
  } catch (const std::exception& e) {
    throw runtime_error(fmt::format("rank {}: the {} ranks did not all join at {} within {} s ({})", o.rank,
                                    o.world_size, where, o.timeout.count(), short_message(e.what())));
  }
  return std::shared_ptr<Communicator>(new Communicator(std::move(impl)));
}

void Communicator::sum(const std::vector<torch::Tensor>& tensors) {
  impl_->bucketed(tensors, [&](std::vector<torch::Tensor>& bucket) { return impl_->group->allreduce(bucket); });
}

void Communicator::broadcast(const std::vector<torch::Tensor>& tensors) {
  impl_->bucketed(tensors, [&](std::vector<torch::Tensor>& bucket) { return impl_->group->broadcast(bucket); });
}

void Communicator::check_same(const std::vector<std::pair<std::string, int64_t>>& values) {
  std::vector<int64_t> mine;
  for (const auto& v : values) mine.push_back(v.second);
  auto theirs = torch::tensor(mine, torch::kInt64);
  broadcast({theirs});
  auto differs = theirs.ne(torch::tensor(mine, torch::kInt64)).to(torch::kInt64);
  sum({differs});
  for (size_t i = 0; i < values.size(); ++i)
    if (differs[static_cast<int64_t>(i)].item<int64_t>() != 0)
      throw usage_error(fmt::format("rank {}: the ranks disagree on {} (here {}, on rank 0 {}); start every rank "
                                    "with the same model, data and options",
                                    rank(), values[i].first, values[i].second,
                                    theirs[static_cast<int64_t>(i)].item<int64_t>()));
}

}  // namespace ttq
