// Host side of the SIMT emulator: guarded buffers and kernel launches (see simt.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace simt {

// Memory for one kernel argument or the dynamic shared memory: `bytes` usable bytes whose end lies
// within 15 bytes of an inaccessible page (and whose start follows another), surrounded and
// initially filled with a NaN pattern, so out-of-bounds accesses fault and unwritten values show.
struct Buffer {
  Buffer(size_t bytes, const std::string& name);
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  bool canaries_intact() const;  // no write landed in the slack around the data
  void poison();                 // refill the data with the NaN pattern
  char* data = nullptr;
  size_t bytes = 0, slack = 0;
  std::string name;
  void* mapped = nullptr;
};

enum class Order { Ascending = 0, Descending = 1, Shuffled = 2 };

// Runs `body` as every thread of `blocks` blocks of `threads` threads (1-D) with `shared_bytes` of
// dynamic shared memory, threads scheduled in `order` between barriers (Shuffled: a new random
// permutation, from `seed`, at every barrier). Returns "" or what went wrong.
std::string launch(unsigned blocks, unsigned threads, size_t shared_bytes, Order order, uint64_t seed,
                   const std::function<void()>& body);

}  // namespace simt
