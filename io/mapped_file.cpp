#include "io/mapped_file.h"

#include <sys/mman.h>

#include <boost/interprocess/file_mapping.hpp>
#include <boost/interprocess/mapped_region.hpp>

#include "io/file.h"

namespace bip = boost::interprocess;

namespace sli::io {

struct MappedFile::Impl {
    bip::file_mapping mapping;
    bip::mapped_region region;
};

MappedFile::MappedFile() noexcept = default;
MappedFile::~MappedFile() = default;
MappedFile::MappedFile(MappedFile&&) noexcept = default;
MappedFile& MappedFile::operator=(MappedFile&&) noexcept = default;

Result<MappedFile> MappedFile::open(const std::string& path) {
    MappedFile m;
    m.path_ = path;
    auto size = fileSize(path);
    if (!size.isOk()) return size.status();
    if (*size == 0) return m;  // mapping zero bytes is an error in mmap(2); nothing to map
    try {
        auto impl = std::make_unique<Impl>();
        impl->mapping = bip::file_mapping(path.c_str(), bip::read_only);
        impl->region = bip::mapped_region(impl->mapping, bip::read_only, 0, *size);
        m.data_ = static_cast<const uint8_t*>(impl->region.get_address());
        m.size_ = impl->region.get_size();
        m.impl_ = std::move(impl);
    } catch (const bip::interprocess_exception& e) {
        const int err = e.get_native_error();
        if (e.get_error_code() == bip::not_found_error) {
            return Status::notFound("mmap " + path + ": " + e.what());
        }
        return Status::ioError("mmap " + path + ": " + e.what(), err > 0 ? err : 0);
    } catch (const std::exception& e) {
        return Status::ioError("mmap " + path + ": " + e.what());
    }
    return m;
}

void MappedFile::adviseSequential() const noexcept {
    if (data_ == nullptr) return;
    const uintptr_t page = 4096;
    auto* base = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(data_) & ~(page - 1));
    (void)::madvise(base, size_ + (reinterpret_cast<uintptr_t>(data_) & (page - 1)),
                    MADV_SEQUENTIAL);
}

}  // namespace sli::io
