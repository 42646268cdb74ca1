// io_uring backend of the read scheduler (see io/read_scheduler.h for the contract).
//
// One ring per backend instance, i.e. per scheduler and so per submitting thread. Reads are
// IORING_OP_READ, or IORING_OP_READ_FIXED when the destination lies inside a region given to
// registerBuffers(); fds given to registerFile() go into a sparse registered-file table and are
// used with IOSQE_FIXED_FILE. A batch of reads costs one io_uring_submit; completions are reaped
// in batches (io_uring_peek_batch_cqe + io_uring_cq_advance), waiting with
// io_uring_submit_and_wait_timeout only when none is ready.
//
// The ring lives in a non-movable object held by unique_ptr: once buffers are registered the
// kernel holds pointers into it. Thread safety: driven by one thread (the scheduler's owner).
//
// probeIoUring() sets up a tiny ring once per process and runs a NOP and a READ through it;
// under seccomp (ENOSYS / EPERM), with io_uring disabled by sysctl, or out of memlock it says
// not usable, and the factories return NotSupported.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "io/read_scheduler.h"

namespace sli::io {

struct IoUringProbe {
    bool compiled = false;  // built with liburing
    bool usable = false;
    int err = 0;            // errno of the failing step
    std::string reason;     // "io_uring_queue_init: Operation not permitted", or "ok"
};
// Cached after the first call; thread-safe.
const IoUringProbe& probeIoUring();

// The raw backend (capacity = queueDepth). NotSupported when io_uring is unusable.
Result<std::unique_ptr<ReadBackend>> makeUringBackend(uint32_t queueDepth);
// makeChunkedScheduler over makeUringBackend.
Result<std::unique_ptr<ReadScheduler>> makeUringScheduler(const ReadSchedulerOptions& options);

}  // namespace sli::io
