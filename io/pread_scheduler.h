// pread thread-pool backend of the read scheduler (see io/read_scheduler.h for the contract),
// used when io_uring is unavailable or asked for.
//
// N worker threads take raw reads from a queue and run one pread(2) each, reporting the raw
// result (short reads and -errno untouched: the chunked layer above retries). Works with O_DIRECT
// fds given aligned requests. submit() only queues; reap() waits on a condition variable.
//
// Thread safety: submit/reap are called by the scheduler's owner thread; the workers are internal.
// The destructor stops the workers after the reads they hold finish; queued reads are dropped.
#pragma once

#include <cstdint>
#include <memory>

#include "io/read_scheduler.h"

namespace sli::io {

// threads >= 1; capacity = most reads in flight (queued + running).
Result<std::unique_ptr<ReadBackend>> makePreadBackend(uint32_t threads, uint32_t capacity);
// makeChunkedScheduler over makePreadBackend (threads = options.preadThreads or
// min(queueDepth, 16)).
Result<std::unique_ptr<ReadScheduler>> makePreadScheduler(const ReadSchedulerOptions& options);

}  // namespace sli::io
