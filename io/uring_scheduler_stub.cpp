// Built when liburing is absent: io_uring is never usable.
#include "io/uring_scheduler.h"

#include <cerrno>

namespace sli::io {

const IoUringProbe& probeIoUring() {
    static const IoUringProbe probe{false, false, ENOSYS, "built without liburing"};
    return probe;
}

Result<std::unique_ptr<ReadBackend>> makeUringBackend(uint32_t) {
    return Status::notSupported("io_uring: built without liburing");
}

Result<std::unique_ptr<ReadScheduler>> makeUringScheduler(const ReadSchedulerOptions&) {
    return Status::notSupported("io_uring: built without liburing");
}

}  // namespace sli::io
