// Host side of the SIMT emulator: guarded buffers and kernel launches (see simt.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace simt {

// Where a guarded buffer's data lies against its inaccessible guard pages: with End, an access just
// past the last byte faults; with Start, an access just before the first byte does (the other side
// is a poisoned slack, checked for writes by canaries_intact).
enum class Guard { End = 0, Start = 1 };
void set_guard(Guard guard);  // for the buffers allocated from now on

// Memory for one kernel argument or the dynamic shared memory: `bytes` usable bytes between two
// inaccessible pages, surrounded and initially filled with a NaN pattern, so out-of-bounds accesses
// fault or show and unwritten values are NaN.
struct Buffer {
  Buffer(size_t bytes, const std::string& name);
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  bool canaries_intact() const;  // no write landed in the slack around the data
  void poison();                 // refill the data with the NaN pattern
  char* data = nullptr;
  size_t bytes = 0;
  std::string name;
  void* mapped = nullptr;
  size_t mapped_bytes = 0;
};

enum class Order { Ascending = 0, Descending = 1, Shuffled = 2 };

// Runs `body` as every thread of `blocks` blocks of `threads` threads (1-D) with `shared_bytes` of
// dynamic shared memory, threads scheduled in `order` (Shuffled: a new random permutation, from
// `seed`, at every __syncthreads; Descending also runs the blocks last to first). Returns "" or what
// went wrong.
std::string launch(unsigned blocks, unsigned threads, size_t shared_bytes, Order order, uint64_t seed,
                   const std::function<void()>& body);

}  // namespace simt
