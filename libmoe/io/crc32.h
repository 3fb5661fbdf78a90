// Zip's CRC-32 (the value zlib's crc32() computes), used by the torch zip writer and reader,
// which checksum every storage they copy or read. Carry-less multiply on x86-64 CPUs that
// have it (several times zlib 1.2's table-driven speed), zlib elsewhere.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe::io {

// `crc` (the CRC-32 of earlier bytes, 0 to start) extended by the `n` bytes at `p`.
uint32_t crc32_update(uint32_t crc, const void* p, size_t n);

}  // namespace moe::io
