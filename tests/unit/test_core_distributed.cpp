// core/distributed: two real ranks over Gloo on 127.0.0.1, one thread each, in this process.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "catch.h"
#include <array>
#include <future>
#include <optional>
#include <string>

#include "core/distributed.h"
#include "core/error.h"

using namespace ttq;

namespace {

int free_port() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t n = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &n);
  close(s);
  return ntohs(a.sin_port);
}

// Tensors that cross every bucket boundary: dtype changes, one larger than a bucket, small ones
// on both sides of it. Rank r's values are (r + 1) times a pattern that differs per tensor.
std::vector<torch::Tensor> tensors_of(int rank) {
  const int64_t big = Communicator::kBucketBytes / 4 + 1000;  // floats: more than one bucket
  std::vector<torch::Tensor> out{torch::arange(3, torch::kFloat32), torch::arange(big, torch::kFloat32).fmod(977),
                                 torch::arange(5, torch::kFloat32).neg(), torch::arange(4, torch::kInt64) * 1000,
                                 torch::arange(6, torch::kFloat32).view({2, 3}) + 0.5};
  for (auto& t : out) t.mul_(rank + 1);
  return out;
}

// Runs `body` on ranks 0 and 1 at once and returns what each rank's body returned. Catch2's
// assertions are not thread-safe (Catch2 3 aborts when two threads assert at once), so the
// bodies only compute and the test asserts on their results afterwards, in this thread.
template <typename Body>
auto on_two_ranks(Body body) {
  DistOptions o;
  o.world_size = 2;
  o.master_port = free_port();
  o.timeout = std::chrono::seconds(30);
  auto run = [&](int rank) {
    DistOptions mine = o;
    mine.rank = rank;
    return body(*Communicator::connect(mine), rank);
  };
  auto other = std::async(std::launch::async, run, 1);
  auto first = run(0);
  return std::array<decltype(first), 2>{std::move(first), other.get()};
}

// Each rank's tensors_of(rank) after `collective` ran on them.
template <typename Collective>
std::array<std::vector<torch::Tensor>, 2> after_collective(Collective collective) {
  return on_two_ranks([collective](Communicator& comm, int rank) {
    auto tensors = tensors_of(rank);
    collective(comm, tensors);
    return tensors;
  });
}

}  // namespace

TEST_CASE("bucketed sums over two ranks land in every tensor, in place") {
  const auto results = after_collective([](Communicator& comm, std::vector<torch::Tensor>& t) { comm.sum(t); });
  const auto expected = tensors_of(0);
  for (const auto& tensors : results) {
    REQUIRE(tensors.size() == expected.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      REQUIRE(tensors[i].sizes() == expected[i].sizes());
      REQUIRE(tensors[i].scalar_type() == expected[i].scalar_type());
      REQUIRE(torch::equal(tensors[i], expected[i] * 3));  // 1x + 2x
    }
  }
}

TEST_CASE("broadcast gives every rank rank 0's tensors") {
  const auto results = after_collective([](Communicator& comm, std::vector<torch::Tensor>& t) { comm.broadcast(t); });
  const auto expected = tensors_of(0);
  for (const auto& tensors : results)
    for (size_t i = 0; i < tensors.size(); ++i) REQUIRE(torch::equal(tensors[i], expected[i]));
}

TEST_CASE("ranks that disagree are told which value differs") {
  struct Outcome {
    bool same_passed = false;
    std::optional<ErrorKind> kind;
    std::string message;
  };
  const auto results = on_two_ranks([](Communicator& comm, int rank) {
    Outcome out;
    comm.check_same({{"--batch-size", 64}, {"--seed", 3}});  // the same: no error
    out.same_passed = true;
    try {
      comm.check_same({{"--batch-size", 64}, {"--seed", rank}});
    } catch (const Error& e) {
      out.kind = e.kind();
      out.message = e.what();
    }
    return out;
  });
  for (const auto& out : results) {
    REQUIRE(out.same_passed);
    REQUIRE(out.kind == ErrorKind::Usage);
    REQUIRE_THAT(out.message, Catch::Contains("disagree on --seed"));
  }
}

TEST_CASE("impossible group options are usage errors before any connection") {
  DistOptions o;
  o.world_size = 2;
  o.rank = 2;
  REQUIRE_THROWS_WITH(Communicator::connect(o), Catch::Contains("outside 0..1"));
  o.rank = 0;
  o.backend = Backend::Nccl;
  REQUIRE_THROWS_WITH(Communicator::connect(o), Catch::Contains("CPU-only"));
}
