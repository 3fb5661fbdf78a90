// Process-wide allocator policy for training and inference loops.
#pragma once

namespace moe {

// glibc returns large blocks to the kernel on free (mmap'd chunks, heap trimming), so a step that
// allocates and frees the same large buffers every iteration pays a page fault per 4 KiB each
// time (PyTorch on these machines loses about a quarter of a step that way). This keeps freed
// memory in the process for reuse: after the first step, steps fault no new pages. Call once at
// start-up, before threads start allocating.
void keep_freed_memory();

}  // namespace moe
