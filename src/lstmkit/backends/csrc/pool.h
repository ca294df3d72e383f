// lstmkit's fused CPU kernel, its large buffers: huge pages from a pool. Included by lstm_cpu.cpp
// only.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <pthread.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>

namespace lstmkit {

// A tensor for the (T, B, ..) buffers: at 4 MiB and more in transparent huge pages (madvise), so
// that first touching it costs one page fault per 2 MiB, not per 4 KiB (page faults dominated the
// training forward otherwise: B=16, H=128, 90 µs per step instead of 44). Freed blocks go back to
// a pool of up to POOL_BYTES (the oldest make room) and are handed out again: the kernel zeroes
// every fresh page, which for a 16 MB projection costs as much as a fifth of the product (B=64,
// H=128: 6.8 ms fresh, 5.7 reused).
constexpr size_t HUGE_PAGE = size_t(2) << 20, POOL_BYTES = size_t(256) << 20;
struct Pool {
  struct Block {
    void* data;
    uint64_t age;  // when it was given back
  };
  std::mutex lock;
  std::multimap<size_t, Block> blocks;  // free blocks by size
  size_t bytes = 0;
  uint64_t clock = 0;
  void* take(size_t& size) {  // a free block of size .. 2 size (size becomes its size), or null
    std::lock_guard<std::mutex> guard(lock);
    auto it = blocks.lower_bound(size);
    if (it == blocks.end() || it->first > 2 * size) return nullptr;
    void* data = it->second.data;
    size = it->first, bytes -= size, blocks.erase(it);
    return data;
  }
  void give(void* data, size_t size) {  // kept, making room by freeing the oldest blocks
    if (size > POOL_BYTES) return std::free(data);
    std::lock_guard<std::mutex> guard(lock);
    while (bytes + size > POOL_BYTES) {
      auto oldest = blocks.begin();
      for (auto it = blocks.begin(); it != blocks.end(); ++it)
        if (it->second.age < oldest->second.age) oldest = it;
      bytes -= oldest->first, std::free(oldest->second.data), blocks.erase(oldest);
    }
    bytes += size, blocks.emplace(size, Block{data, clock++});
  }
  void release() {
    std::lock_guard<std::mutex> guard(lock);
    for (auto& block : blocks) std::free(block.second.data);
    blocks.clear(), bytes = 0;
  }
};
inline Pool& pool() {
  // Never destroyed: tensors may be freed after static destructors ran. A fork holds the lock, so
  // that a child (a DataLoader worker, say) never starts with it taken by a thread it does not have.
  static Pool* p = [] {
    pthread_atfork([] { pool().lock.lock(); }, [] { pool().lock.unlock(); }, [] { pool().lock.unlock(); });
    return new Pool;
  }();
  return *p;
}

inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  size_t bytes = options.dtype().itemsize();
  for (int64_t s : sizes) bytes *= size_t(s);
  if (bytes < 2 * HUGE_PAGE) return at::empty(sizes, options);
  size_t size = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
  void* data = pool().take(size);
  if (!data) {
    if (posix_memalign(&data, HUGE_PAGE, size) != 0) return at::empty(sizes, options);
    madvise(data, size, MADV_HUGEPAGE);
  }
  return at::from_blob(data, sizes, [size](void* p) { pool().give(p, size); }, options);
}

// Frees the pooled blocks (lstmkit.backends.cpu.release_memory).
inline void release_memory() { pool().release(); }

}  // namespace lstmkit
