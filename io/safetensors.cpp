// Safetensors reader and writer; the rules are listed in include/sli/safetensors.h.
#include "sli/safetensors.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "io/file.h"
#include "sli/json.h"
#include "sli/log.h"
#include "sli/tensor.h"

namespace sli {
namespace {

constexpr uint64_t kFingerprintSample = 4096;  // bytes per data sample in the fingerprint

Status bad(std::string_view path, std::string_view rule) {
    return Status::invalidArgument("safetensors " + std::string(path) + ": " + std::string(rule));
}

bool validUtf8(std::span<const uint8_t> s, size_t* badAt) {
    size_t i = 0;
    while (i < s.size()) {
        const uint8_t c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
            cp = c & 0x07;
        } else {
            *badAt = i;
            return false;
        }
        if (i + len > s.size()) {
            *badAt = i;
            return false;
        }
        for (size_t k = 1; k < len; ++k) {
            if ((s[i + k] & 0xc0) != 0x80) {
                *badAt = i;
                return false;
            }
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        const bool overlong = (len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
                              (len == 4 && cp < 0x10000);
        if (overlong || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            *badAt = i;
            return false;
        }
        i += len;
    }
    return true;
}

uint64_t readLe64(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

}  // namespace

const SafetensorsTensorInfo* SafetensorsHeader::find(std::string_view name) const {
    for (const auto& t : tensors) {
        if (t.name == name) return &t;
    }
    return nullptr;
}

Result<SafetensorsHeader> parseSafetensorsHeader(std::span<const uint8_t> prefix,
                                                 uint64_t fileSize, std::string_view path) {
    if (fileSize < 8 || prefix.size() < 8) {
        return bad(path, "file is " + std::to_string(fileSize) +
                             " bytes, shorter than the 8-byte header length field");
    }
    SafetensorsHeader h;
    h.headerLength = readLe64(prefix.data());
    if (h.headerLength > kSafetensorsMaxHeader) {
        return bad(path, "header length " + std::to_string(h.headerLength) +
                             " exceeds the limit of 100000000 bytes");
    }
    if (8 + h.headerLength > fileSize) {
        return bad(path, "header length " + std::to_string(h.headerLength) +
                             " runs past the end of the file (" + std::to_string(fileSize) +
                             " bytes)");
    }
    if (prefix.size() < 8 + h.headerLength) {
        return bad(path, "header truncated in the buffer given to the parser");
    }
    h.dataStart = 8 + h.headerLength;
    const auto text = prefix.subspan(8, h.headerLength);
    if (text.empty()) return bad(path, "header is empty (length 0); it must be a JSON object");
    size_t badAt = 0;
    if (!validUtf8(text, &badAt)) {
        return bad(path, "header is not valid UTF-8 (byte " + std::to_string(badAt) + ")");
    }
    if (text[0] != '{') return bad(path, "header does not start with '{'");
    auto parsed = parseJson(std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
    if (!parsed.isOk()) return bad(path, "header is not valid JSON: " + parsed.status().message());
    const Json& root = *parsed;
    if (!root.isObject()) return bad(path, "header is not a JSON object");

    for (const auto& [name, value] : root.asObject()) {
        if (name == "__metadata__") {
            // null is "no metadata", as in the reference implementation.
            if (value.isNull()) continue;
            if (!value.isObject()) return bad(path, "__metadata__ is not an object");
            for (const auto& [k, v] : value.asObject()) {
                if (!v.isString()) {
                    return bad(path, "__metadata__ value of \"" + k + "\" is a " +
                                         Json::typeName(v.type()) + ", not a string");
                }
                h.metadata.emplace_back(k, v.asString());
            }
            continue;
        }
        const std::string where = "tensor \"" + name + "\": ";
        if (!value.isObject()) return bad(path, where + "entry is not an object");
        const Json* dt = value.find("dtype");
        if (dt == nullptr) return bad(path, where + "missing \"dtype\"");
        if (!dt->isString()) return bad(path, where + "\"dtype\" is not a string");
        auto dtype = parseDType(dt->asString());
        // Only the safetensors (upper-case) spellings are valid in a file.
        if (!dtype || dt->asString() != dtypeSafetensorsName(*dtype)) {
            return bad(path, where + "unknown dtype \"" + dt->asString() + "\"");
        }
        const Json* sh = value.find("shape");
        if (sh == nullptr) return bad(path, where + "missing \"shape\"");
        if (!sh->isArray()) return bad(path, where + "\"shape\" is not an array");
        SafetensorsTensorInfo t;
        t.name = name;
        t.dtype = *dtype;
        for (const Json& d : sh->asArray()) {
            auto v = d.isInteger() ? d.asInt64() : std::nullopt;
            if (!v || *v < 0) {
                return bad(path, where + "\"shape\" holds something other than a non-negative integer");
            }
            t.shape.push_back(*v);
        }
        const Json* off = value.find("data_offsets");
        if (off == nullptr) return bad(path, where + "missing \"data_offsets\"");
        if (!off->isArray() || off->asArray().size() != 2) {
            return bad(path, where + "\"data_offsets\" is not an array of two integers");
        }
        auto b = off->asArray()[0].isInteger() ? off->asArray()[0].asUint64() : std::nullopt;
        auto e = off->asArray()[1].isInteger() ? off->asArray()[1].asUint64() : std::nullopt;
        if (!b || !e) {
            return bad(path, where + "\"data_offsets\" entries must be non-negative integers");
        }
        if (*b > *e) {
            return bad(path, where + "data_offsets begin " + std::to_string(*b) +
                                 " is after end " + std::to_string(*e));
        }
        t.begin = *b;
        t.end = *e;
        uint64_t numel = 1;
        for (int64_t d : t.shape) {
            if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) {
                return bad(path, where + "element count of shape " + shapeToString(t.shape) +
                                     " overflows");
            }
        }
        uint64_t bytes;
        if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtypeSize(t.dtype)), &bytes)) {
            return bad(path, where + "byte size of shape " + shapeToString(t.shape) + " overflows");
        }
        if (bytes != t.nbytes()) {
            return bad(path, where + "data_offsets span " + std::to_string(t.nbytes()) +
                                 " bytes but " + dt->asString() + " " + shapeToString(t.shape) +
                                 " needs " + std::to_string(bytes));
        }
        h.tensors.push_back(std::move(t));
    }

    std::stable_sort(h.tensors.begin(), h.tensors.end(),
                     [](const auto& a, const auto& b) {
                         return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                     });
    uint64_t expected = 0;
    for (const auto& t : h.tensors) {
        if (t.begin > expected) {
            return bad(path, "tensor \"" + t.name + "\" begins at " + std::to_string(t.begin) +
                                 " but the previous tensor ends at " + std::to_string(expected) +
                                 ": a hole in the data region");
        }
        if (t.begin < expected) {
            return bad(path, "tensor \"" + t.name + "\" begins at " + std::to_string(t.begin) +
                                 ", overlapping the previous tensor, which ends at " +
                                 std::to_string(expected));
        }
        expected = t.end;
    }
    const uint64_t dataBytes = fileSize - h.dataStart;
    if (expected != dataBytes) {
        if (expected > dataBytes) {
            return Status::corruption("safetensors " + std::string(path) + ": tensors end at " +
                                      std::to_string(expected) + " but the data region holds only " +
                                      std::to_string(dataBytes) + " bytes (file truncated)");
        }
        return bad(path, "the last tensor ends at " + std::to_string(expected) +
                             " but the data region holds " + std::to_string(dataBytes) +
                             " bytes: the last tensor must end at the end of the file");
    }
    return h;
}

// ---- SafetensorsFile --------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile() = default;
SafetensorsFile::~SafetensorsFile() {
    if (fd_ >= 0) ::close(fd_);
}
SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept
    : path_(std::move(o.path_)), fd_(o.fd_), fileSize_(o.fileSize_), header_(std::move(o.header_)) {
    o.fd_ = -1;
}
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
    if (this != &o) {
        if (fd_ >= 0) ::close(fd_);
        path_ = std::move(o.path_);
        fd_ = o.fd_;
        fileSize_ = o.fileSize_;
        header_ = std::move(o.header_);
        o.fd_ = -1;
    }
    return *this;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
    SafetensorsFile f;
    f.path_ = path;
    SLI_ASSIGN_OR_RETURN(io::UniqueFd fd, io::openFile(path, O_RDONLY));
    SLI_ASSIGN_OR_RETURN(f.fileSize_, io::fileSize(fd.get(), path));
    std::vector<uint8_t> prefix(std::min<uint64_t>(f.fileSize_, 8));
    SLI_RETURN_IF_ERROR(io::preadAll(fd.get(), prefix, 0, path));
    if (prefix.size() == 8) {
        const uint64_t n = readLe64(prefix.data());
        if (n <= kSafetensorsMaxHeader && 8 + n <= f.fileSize_) {
            prefix.resize(8 + n);
            SLI_RETURN_IF_ERROR(io::preadAll(fd.get(), std::span(prefix).subspan(8), 8, path));
        }
    }
    SLI_ASSIGN_OR_RETURN(f.header_, parseSafetensorsHeader(prefix, f.fileSize_, path));
    f.fd_ = fd.release();
    return f;
}

Status SafetensorsFile::readTensor(const SafetensorsTensorInfo& t, std::span<uint8_t> out) const {
    if (out.size() != t.nbytes()) {
        return Status::invalidArgument("safetensors " + path_ + ": tensor " + t.name + " holds " +
                                       std::to_string(t.nbytes()) + " bytes, buffer has " +
                                       std::to_string(out.size()));
    }
    return readTensorRange(t, 0, out);
}

Status SafetensorsFile::readTensorRange(const SafetensorsTensorInfo& t, uint64_t offset,
                                        std::span<uint8_t> out) const {
    if (offset > t.nbytes() || out.size() > t.nbytes() - offset) {
        return Status::invalidArgument("safetensors " + path_ + ": read past the end of tensor " +
                                       t.name);
    }
    return io::preadAll(fd_, out, header_.dataStart + t.begin + offset,
                        path_ + " (tensor " + t.name + ")");
}

// ---- SafetensorsModel -------------------------------------------------------------------------

namespace {
bool endsWith(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}
}  // namespace

const SafetensorsModel::Entry* SafetensorsModel::find(std::string_view name) const {
    for (const auto& e : tensors_) {
        if (e.info->name == name) return &e;
    }
    return nullptr;
}

uint64_t SafetensorsModel::totalTensorBytes() const {
    uint64_t n = 0;
    for (const auto& e : tensors_) n += e.info->nbytes();
    return n;
}

Result<SafetensorsModel> SafetensorsModel::open(const std::string& pathIn) {
    SafetensorsModel m;
    m.source_ = pathIn;
    std::string dir;
    std::string indexPath;
    std::vector<std::string> shardNames;
    // name -> shard file, from the index
    std::vector<std::pair<std::string, std::string>> weightMap;
    if (io::isDirectory(pathIn)) {
        dir = pathIn;
        const std::string idx = io::joinPath(dir, "model.safetensors.index.json");
        if (io::pathExists(idx)) {
            indexPath = idx;
        } else {
            SLI_ASSIGN_OR_RETURN(auto names, io::listDirectory(dir));
            for (auto& n : names) {
                if (endsWith(n, ".safetensors") && n[0] != '.') shardNames.push_back(n);
            }
            if (shardNames.empty()) {
                return Status::notFound("no .safetensors files in directory " + dir);
            }
        }
    } else if (endsWith(pathIn, ".json")) {
        indexPath = pathIn;
        dir = io::dirName(pathIn);
    } else {
        dir = io::dirName(pathIn);
        shardNames.push_back(io::baseName(pathIn));
    }

    if (!indexPath.empty()) {
        SLI_ASSIGN_OR_RETURN(auto bytes, io::readWholeFile(indexPath));
        auto j = parseJson(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
        if (!j.isOk()) {
            return Status::invalidArgument("safetensors index " + indexPath + ": not valid JSON: " +
                                           j.status().message());
        }
        if (!j->isObject()) {
            return Status::invalidArgument("safetensors index " + indexPath + ": not a JSON object");
        }
        const Json* wm = j->find("weight_map");
        if (wm == nullptr || !wm->isObject()) {
            return Status::invalidArgument("safetensors index " + indexPath +
                                           ": missing \"weight_map\" object");
        }
        if (const Json* md = j->find("metadata"); md != nullptr && md->isObject()) {
            for (const auto& [k, v] : md->asObject()) {
                m.metadata_.emplace_back(k, v.isString() ? v.asString() : v.dump());
            }
        }
        std::unordered_set<std::string> seen;
        for (const auto& [name, shard] : wm->asObject()) {
            if (!shard.isString()) {
                return Status::invalidArgument("safetensors index " + indexPath + ": weight_map[\"" +
                                               name + "\"] is not a string");
            }
            const std::string& s = shard.asString();
            if (s.empty() || s.find('/') != std::string::npos || s == "." || s == "..") {
                return Status::invalidArgument("safetensors index " + indexPath + ": shard name \"" +
                                               s + "\" for tensor " + name +
                                               " is not a file name in the index's directory");
            }
            weightMap.emplace_back(name, s);
            if (seen.insert(s).second) shardNames.push_back(s);
        }
        if (weightMap.empty()) {
            return Status::invalidArgument("safetensors index " + indexPath + ": weight_map is empty");
        }
    }

    std::unordered_map<std::string, size_t> shardIndex;
    XXH3_state_t* hs = XXH3_createState();
    XXH3_64bits_reset(hs);
    for (const auto& s : shardNames) {
        const std::string p = io::joinPath(dir, s);
        if (!indexPath.empty() && !io::pathExists(p)) {
            XXH3_freeState(hs);
            return Status::notFound("safetensors index " + indexPath + " names shard " + s +
                                    ", which is missing (" + p + ")");
        }
        auto f = SafetensorsFile::open(p);
        if (!f.isOk()) {
            XXH3_freeState(hs);
            return f.status();
        }
        // Fingerprint: shard name, size, what its header says (names with their lengths,
        // offsets, dtype, shape; metadata), so a header that changes in any way changes it.
        auto str = [&](const std::string& v) {
            const uint64_t n = v.size();
            XXH3_64bits_update(hs, &n, sizeof n);
            XXH3_64bits_update(hs, v.data(), v.size());
        };
        str(s);
        const uint64_t size = f->fileSize();
        XXH3_64bits_update(hs, &size, sizeof size);
        for (const auto& t : f->header().tensors) {
            str(t.name);
            XXH3_64bits_update(hs, &t.begin, sizeof t.begin);
            XXH3_64bits_update(hs, &t.end, sizeof t.end);
            const uint8_t d = static_cast<uint8_t>(t.dtype);
            XXH3_64bits_update(hs, &d, 1);
            const uint64_t rank = t.shape.size();
            XXH3_64bits_update(hs, &rank, sizeof rank);
            XXH3_64bits_update(hs, t.shape.data(), t.shape.size() * sizeof(int64_t));
        }
        for (const auto& [k, v] : f->header().metadata) {
            str(k);
            str(v);
        }
        // And samples of the data: each tensor's first, middle and last 4 KiB (all of a smaller
        // one), so weights rewritten under an identical header (a fine-tune saved over its
        // base) change it too, while opening reads at most 12 KiB per tensor.
        {
            std::vector<uint8_t> sample(kFingerprintSample);
            for (const auto& t : f->header().tensors) {
                const uint64_t n = t.nbytes();
                const uint64_t len = std::min<uint64_t>(n, kFingerprintSample);
                uint64_t at[3] = {0, (n - len) / 2 / 4096 * 4096, n - len};
                const int count = n <= kFingerprintSample ? 1 : n <= 2 * kFingerprintSample ? 2 : 3;
                if (count == 2) at[1] = at[2];
                for (int i = 0; i < count && len > 0; ++i) {
                    const auto out = std::span(sample.data(), static_cast<size_t>(len));
                    if (Status st = f->readTensorRange(t, at[i], out); !st.isOk()) {
                        XXH3_freeState(hs);
                        return st.withContext("fingerprinting " + p);
                    }
                    XXH3_64bits_update(hs, out.data(), out.size());
                }
            }
        }
        for (const auto& kv : f->header().metadata) m.metadata_.push_back(kv);
        shardIndex[s] = m.shards_.size();
        m.shards_.push_back(std::move(*f));
    }
    char fp[17];
    std::snprintf(fp, sizeof fp, "%016llx", static_cast<unsigned long long>(XXH3_64bits_digest(hs)));
    XXH3_freeState(hs);
    m.fingerprint_ = fp;

    if (!indexPath.empty()) {
        // The index is authoritative: keep its tensors, each from the shard it names.
        for (const auto& [name, s] : weightMap) {
            const size_t si = shardIndex.at(s);
            const SafetensorsTensorInfo* info = m.shards_[si].header().find(name);
            if (info == nullptr) {
                return Status::notFound("safetensors index " + indexPath + " places tensor " + name +
                                        " in shard " + s + ", which lacks it");
            }
            m.tensors_.push_back({info, si});
        }
        std::unordered_set<std::string> listedNames;
        for (const auto& kv : weightMap) listedNames.insert(kv.first);
        for (size_t si = 0; si < m.shards_.size(); ++si) {
            for (const auto& t : m.shards_[si].header().tensors) {
                if (listedNames.count(t.name) == 0) {
                    SLI_WARN("io", "%s: tensor %s is not in the index's weight_map; ignored",
                             m.shards_[si].path().c_str(), t.name.c_str());
                }
            }
        }
        // Checkpoint order: shard, then offset.
        std::stable_sort(m.tensors_.begin(), m.tensors_.end(), [](const Entry& a, const Entry& b) {
            return a.shard != b.shard ? a.shard < b.shard : a.info->begin < b.info->begin;
        });
    } else {
        std::unordered_map<std::string, size_t> seen;
        for (size_t si = 0; si < m.shards_.size(); ++si) {
            for (const auto& t : m.shards_[si].header().tensors) {
                auto [it, fresh] = seen.emplace(t.name, si);
                if (!fresh) {
                    return Status::invalidArgument("tensor " + t.name + " appears in both " +
                                                   m.shards_[it->second].path() + " and " +
                                                   m.shards_[si].path());
                }
                m.tensors_.push_back({&t, si});
            }
        }
    }
    return m;
}

// ---- writer ----------------------------------------------------------------------------------

struct SafetensorsWriter::Impl {
    std::string path;
    std::string tmp;
    io::UniqueFd fd;
    std::vector<TensorDecl> decls;
    std::vector<uint64_t> sizes;
    size_t current = 0;
    uint64_t writtenInCurrent = 0;
    uint64_t pos = 0;
    bool finished = false;
    ~Impl() {
        if (!finished && !tmp.empty()) {
            fd.reset();
            ::unlink(tmp.c_str());
        }
    }
    void skipEmpty() {
        while (current < decls.size() && sizes[current] == writtenInCurrent) {
            ++current;
            writtenInCurrent = 0;
        }
    }
};

SafetensorsWriter::SafetensorsWriter() = default;
SafetensorsWriter::~SafetensorsWriter() = default;
SafetensorsWriter::SafetensorsWriter(SafetensorsWriter&&) noexcept = default;
SafetensorsWriter& SafetensorsWriter::operator=(SafetensorsWriter&&) noexcept = default;

Result<SafetensorsWriter> SafetensorsWriter::create(
    const std::string& path, std::vector<TensorDecl> tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
    auto impl = std::make_unique<Impl>();
    impl->path = path;
    Json header = Json::object();
    if (!metadata.empty()) {
        Json md = Json::object();
        for (const auto& [k, v] : metadata) md.set(k, Json::string(v));
        header.set("__metadata__", std::move(md));
    }
    uint64_t offset = 0;
    std::unordered_set<std::string> names;
    for (const auto& t : tensors) {
        if (t.name == "__metadata__" || !names.insert(t.name).second) {
            return Status::invalidArgument("safetensors writer " + path + ": duplicate or reserved tensor name " + t.name);
        }
        auto n = shapeNumel(t.shape, t.name);
        if (!n.isOk()) return n.status();
        uint64_t bytes;
        if (__builtin_mul_overflow(static_cast<uint64_t>(*n), dtypeSize(t.dtype), &bytes)) {
            return Status::invalidArgument("safetensors writer: tensor " + t.name + " too large");
        }
        Json e = Json::object();
        e.set("dtype", Json::string(dtypeSafetensorsName(t.dtype)));
        Json shape = Json::array();
        for (int64_t d : t.shape) shape.push(Json::integer(d));
        e.set("shape", std::move(shape));
        Json offs = Json::array();
        offs.push(Json::unsignedInteger(offset));
        offs.push(Json::unsignedInteger(offset + bytes));
        e.set("data_offsets", std::move(offs));
        // Names are unique (checked above): appended without Json::set's linear key search,
        // which made a header of many tensors quadratic.
        header.asObject().emplace_back(t.name, std::move(e));
        impl->sizes.push_back(bytes);
        offset += bytes;
    }
    std::string text = header.dump();
    while (text.size() % 8 != 0) text += ' ';
    if (text.size() > kSafetensorsMaxHeader) {
        return Status::invalidArgument("safetensors writer " + path + ": header exceeds 100000000 bytes");
    }
    impl->decls = std::move(tensors);
    SLI_RETURN_IF_ERROR(io::makeDirs(io::dirName(path)));
    impl->tmp = io::tempPathFor(path);
    // Errors name the destination, not only the temporary file the OS failed on.
    const std::string ctx = "writing " + path;
    auto fd = io::openFile(impl->tmp, O_WRONLY | O_CREAT | O_EXCL | O_TRUNC, 0644);
    if (!fd.isOk()) return fd.status().withContext(ctx);
    impl->fd = std::move(fd).value();
    uint8_t len[8];
    uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    Status st = io::pwriteAll(impl->fd.get(), len, 0, impl->tmp);
    if (st.isOk()) {
        st = io::pwriteAll(impl->fd.get(),
                           std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()),
                           8, impl->tmp);
    }
    if (!st.isOk()) return st.withContext(ctx);  // ~Impl removes the temporary file
    impl->pos = 8 + text.size();
    impl->skipEmpty();
    SafetensorsWriter w;
    w.impl_ = std::move(impl);
    return w;
}

std::string_view SafetensorsWriter::currentTensor() const {
    if (!impl_ || impl_->current >= impl_->decls.size()) return {};
    return impl_->decls[impl_->current].name;
}

Status SafetensorsWriter::append(std::span<const uint8_t> bytes) {
    Impl& s = *impl_;
    while (!bytes.empty()) {
        if (s.current >= s.decls.size()) {
            return Status::invalidArgument("safetensors writer " + s.path + ": more bytes than declared");
        }
        const uint64_t room = s.sizes[s.current] - s.writtenInCurrent;
        const size_t n = static_cast<size_t>(std::min<uint64_t>(room, bytes.size()));
        if (Status st = io::pwriteAll(s.fd.get(), bytes.first(n), s.pos, s.tmp); !st.isOk()) {
            return st.withContext("writing " + s.path);
        }
        s.pos += n;
        s.writtenInCurrent += n;
        bytes = bytes.subspan(n);
        s.skipEmpty();
    }
    return Status();
}

Status SafetensorsWriter::finish() {
    Impl& s = *impl_;
    s.skipEmpty();
    if (s.current < s.decls.size()) {
        return Status::invalidArgument("safetensors writer " + s.path + ": tensor " +
                                       s.decls[s.current].name + " is incomplete");
    }
    if (Status st = io::fsyncFd(s.fd.get(), s.tmp); !st.isOk()) return st.withContext("writing " + s.path);
    s.fd.reset();
    if (::rename(s.tmp.c_str(), s.path.c_str()) != 0) {
        return Status::fromErrno(errno, "rename " + s.tmp + " -> " + s.path);
    }
    s.finished = true;
    return io::fsyncDir(io::dirName(s.path));
}

Status writeSafetensors(const std::string& path, const std::vector<SafetensorsInput>& tensors,
                        const std::vector<std::pair<std::string, std::string>>& metadata) {
    std::vector<SafetensorsWriter::TensorDecl> decls;
    for (const auto& t : tensors) decls.push_back({t.name, t.dtype, t.shape});
    SLI_ASSIGN_OR_RETURN(auto w, SafetensorsWriter::create(path, std::move(decls), metadata));
    for (const auto& t : tensors) SLI_RETURN_IF_ERROR(w.append(t.bytes));
    return w.finish();
}

}  // namespace sli
