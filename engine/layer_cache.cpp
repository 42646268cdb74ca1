// LayerCache: see include/sli/cache.h.
#include "sli/cache.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <list>
#include <map>
#include <mutex>
#include <unordered_map>

#include "io/cache_format.h"
#include "io/cache_manifest.h"
#include "io/file.h"
#include "sli/log.h"

namespace sli {
namespace {

struct FileId {
    uint64_t ino = 0, size = 0;
    int64_t mtimeNs = 0;
    bool operator==(const FileId&) const = default;
};

std::optional<FileId> statFile(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return std::nullopt;
    return FileId{static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_size),
                  static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

std::string lockPathOf(const std::string& layerPath) {
    return io::joinPath(io::dirName(layerPath), io::kLockName);
}

}  // namespace

struct LayerCache::Impl {
    std::string root;
    uint64_t maxDisk = 0;
    uint64_t maxMemory = 0;

    mutable std::mutex mu;
    uint64_t tick = 0;
    struct DiskEntry {
        uint64_t size = 0;
        uint64_t lastUse = 0;
    };
    std::map<std::string, DiskEntry> disk;  // layer path -> entry
    uint64_t diskBytes = 0;
    struct MemEntry {
        std::shared_ptr<const std::vector<uint8_t>> bytes;
        FileId id;
        std::list<std::string>::iterator lru;
    };
    std::unordered_map<std::string, MemEntry> memory;
    std::list<std::string> memLru;  // front = most recent
    uint64_t memBytes = 0;
    std::unordered_map<std::string, std::string> lastConfigDir;  // model id -> cache dir
    LayerCacheStats stats;

    void touchDiskLocked(const std::string& path, uint64_t size) {
        auto [it, fresh] = disk.try_emplace(path);
        if (!fresh) diskBytes -= it->second.size;
        it->second.size = size;
        it->second.lastUse = ++tick;
        diskBytes += size;
    }
    void forgetDiskLocked(const std::string& path) {
        auto it = disk.find(path);
        if (it == disk.end()) return;
        diskBytes -= it->second.size;
        disk.erase(it);
    }
    void dropMemoryLocked(const std::string& path) {
        auto it = memory.find(path);
        if (it == memory.end()) return;
        memBytes -= it->second.bytes->size();
        memLru.erase(it->second.lru);
        memory.erase(it);
    }
    void putMemoryLocked(const std::string& path, std::shared_ptr<const std::vector<uint8_t>> b,
                         const FileId& id) {
        if (maxMemory == 0 || b->size() > maxMemory) return;
        dropMemoryLocked(path);
        while (memBytes + b->size() > maxMemory && !memLru.empty()) dropMemoryLocked(memLru.back());
        memLru.push_front(path);
        memBytes += b->size();
        memory[path] = MemEntry{std::move(b), id, memLru.begin()};
    }

    // Candidate files of a layer when no config is given.
    std::vector<std::string> candidatesLocked(std::string_view modelId, int64_t layerIndex) const {
        std::vector<std::string> out;
        const std::string file = io::layerFileName(layerIndex);
        if (auto it = lastConfigDir.find(std::string(modelId)); it != lastConfigDir.end()) {
            out.push_back(io::joinPath(it->second, file));
        }
        const std::string modelDir = io::joinPath(root, io::modelDirName(modelId));
        auto names = io::listDirectory(modelDir);
        if (names.isOk()) {
            std::vector<std::pair<int64_t, std::string>> found;
            for (const auto& n : *names) {
                const std::string p = io::joinPath(io::joinPath(modelDir, n), file);
                if (auto id = statFile(p)) found.emplace_back(id->mtimeNs, p);
            }
            std::sort(found.rbegin(), found.rend());
            for (auto& f : found) out.push_back(std::move(f.second));
        }
        return out;
    }

    Status evictForSpaceLocked(const std::string& keep) {
        if (maxDisk == 0) return Status();
        while (diskBytes > maxDisk && disk.size() > 1) {
            auto victim = disk.end();
            for (auto it = disk.begin(); it != disk.end(); ++it) {
                if (it->first == keep) continue;
                if (victim == disk.end() || it->second.lastUse < victim->second.lastUse) victim = it;
            }
            if (victim == disk.end()) break;
            const std::string path = victim->first;
            auto lock = io::FileLock::acquire(lockPathOf(path), io::FileLock::Kind::kExclusive);
            if (!lock.isOk()) return lock.status();
            SLI_RETURN_IF_ERROR(io::removeFile(path));
            SLI_DEBUG("cache", "evicted %s (%llu bytes)", path.c_str(),
                      static_cast<unsigned long long>(victim->second.size));
            forgetDiskLocked(path);
            dropMemoryLocked(path);
            ++stats.evictions;
        }
        return Status();
    }

    Result<QuantizedLayer> load(const std::string& path, std::string_view modelId,
                                int64_t layerIndex) {
        std::shared_ptr<const std::vector<uint8_t>> bytes;
        FileId id;
        bool fromMemory = false;
        {
            std::lock_guard<std::mutex> g(mu);
            auto it = memory.find(path);
            if (it != memory.end()) {
                auto now = statFile(path);
                if (now && *now == it->second.id) {
                    bytes = it->second.bytes;
                    id = it->second.id;
                    memLru.splice(memLru.begin(), memLru, it->second.lru);
                    fromMemory = true;
                } else {
                    dropMemoryLocked(path);
                }
            }
        }
        if (!bytes) {
            auto lock = io::FileLock::acquire(lockPathOf(path), io::FileLock::Kind::kShared);
            if (!lock.isOk()) return lock.status();
            auto fd = io::openFile(path, O_RDONLY);
            if (!fd.isOk()) {
                std::lock_guard<std::mutex> g(mu);
                ++stats.misses;
                forgetDiskLocked(path);
                if (fd.status().isNotFound()) {
                    return Status::notFound("layer " + std::to_string(layerIndex) + " of model " +
                                            std::string(modelId) + " is not in the cache (" +
                                            path + ")");
                }
                return fd.status();
            }
            lock->unlock();  // the open fd keeps this version of the file
            struct stat st;
            if (::fstat(fd->get(), &st) != 0) return Status::fromErrno(errno, "fstat " + path);
            id = FileId{static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_size),
                        static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
            auto buf = std::make_shared<std::vector<uint8_t>>(id.size);
            SLI_RETURN_IF_ERROR(io::preadAll(fd->get(), *buf, 0, path));
            bytes = std::move(buf);
        }
        auto layer = io::decodeLayerFile(*bytes, path, /*verify=*/true);
        std::lock_guard<std::mutex> g(mu);
        if (!layer.isOk()) {
            if (layer.status().isCorruption()) ++stats.corruptions;
            dropMemoryLocked(path);
            return layer.status();
        }
        if (layer->index != layerIndex) {
            ++stats.corruptions;
            return Status::corruption("cache file " + path + " holds layer " +
                                      std::to_string(layer->index) + ", expected " +
                                      std::to_string(layerIndex));
        }
        if (fromMemory) {
            ++stats.memoryHits;
        } else {
            ++stats.diskHits;
            putMemoryLocked(path, bytes, id);
        }
        touchDiskLocked(path, id.size);
        lastConfigDir[std::string(modelId)] = io::dirName(path);
        return layer;
    }
};

LayerCache::LayerCache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LayerCache::~LayerCache() = default;

Result<std::unique_ptr<LayerCache>> LayerCache::open(std::string cacheDir, double maxCacheSizeGb,
                                                     double maxMemoryCacheSizeGb) {
    if (cacheDir.empty()) return Status::invalidArgument("LayerCache: empty cache directory");
    if (maxCacheSizeGb < 0 || maxMemoryCacheSizeGb < 0) {
        return Status::invalidArgument("LayerCache: negative size limit");
    }
    SLI_RETURN_IF_ERROR(io::makeDirs(cacheDir));
    auto impl = std::make_unique<Impl>();
    impl->root = std::move(cacheDir);
    impl->maxDisk = static_cast<uint64_t>(maxCacheSizeGb * 1e9);
    impl->maxMemory = static_cast<uint64_t>(maxMemoryCacheSizeGb * 1e9);
    // Index existing layer files, oldest first, so recency starts as modification order.
    SLI_ASSIGN_OR_RETURN(auto dirs, io::findCacheDirs(impl->root));
    std::vector<std::pair<int64_t, std::pair<std::string, uint64_t>>> files;
    for (const auto& d : dirs) {
        auto names = io::listDirectory(d);
        if (!names.isOk()) continue;
        for (const auto& n : *names) {
            if (n.size() < 4 || n.compare(n.size() - 4, 4, io::kLayerFileSuffix) != 0 || n[0] == '.') {
                continue;
            }
            const std::string p = io::joinPath(d, n);
            if (auto id = statFile(p)) files.push_back({id->mtimeNs, {p, id->size}});
        }
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) impl->touchDiskLocked(f.second.first, f.second.second);
    return std::unique_ptr<LayerCache>(new LayerCache(std::move(impl)));
}

QuantizationConfig LayerCache::configForMode(QuantizationMode mode) {
    QuantizationConfig c;
    c.mode = mode;
    if (mode == QuantizationMode::kFp4) c.quantType = "fp4";
    if (mode == QuantizationMode::kNf4) c.quantType = "nf4";
    return c;
}

const std::string& LayerCache::root() const noexcept { return impl_->root; }

std::string LayerCache::fingerprint(const QuantizationConfig& config, std::string_view policyJson) {
    if (policyJson.empty()) return config.fingerprint();
    // FNV-1a 64, as QuantizationConfig::fingerprint, over "config JSON \n policy JSON".
    uint64_t h = 0xcbf29ce484222325ull;
    auto mix = [&h](std::string_view s) {
        for (unsigned char c : s) {
            h ^= c;
            h *= 0x100000001b3ull;
        }
    };
    mix(config.toJsonString());
    mix("\n");
    mix(policyJson);
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
}

std::string LayerCache::directoryFor(std::string_view modelId, const QuantizationConfig& config,
                                     std::string_view policyJson) const {
    return io::cacheDirFor(impl_->root, modelId, fingerprint(config, policyJson));
}

std::string LayerCache::layerPath(std::string_view modelId, int64_t layerIndex,
                                  const QuantizationConfig& config,
                                  std::string_view policyJson) const {
    return io::joinPath(directoryFor(modelId, config, policyJson), io::layerFileName(layerIndex));
}

Status LayerCache::cacheLayer(std::string_view modelId, int64_t layerIndex,
                              const QuantizedLayer& layer, QuantizationMode mode) {
    return cacheLayer(modelId, layerIndex, layer, configForMode(mode));
}

Status LayerCache::cacheLayer(std::string_view modelId, int64_t layerIndex,
                              const QuantizedLayer& layerIn, const QuantizationConfig& config,
                              const CacheWriteOptions& options) {
    if (modelId.empty()) return Status::invalidArgument("cacheLayer: empty model id");
    if (layerIndex < 0) {
        return Status::invalidArgument("cacheLayer: negative layer index for model " +
                                       std::string(modelId));
    }
    SLI_RETURN_IF_ERROR(config.validate());
    const std::string dir = directoryFor(modelId, config, options.policyJson);
    const std::string path = io::joinPath(dir, io::layerFileName(layerIndex));
    SLI_RETURN_IF_ERROR(io::makeDirs(dir));
    io::removeStaleTempFiles(dir);

    // The layer is written under the index it is cached as.
    const QuantizedLayer* layer = &layerIn;
    QuantizedLayer renamed;
    if (layerIn.index != layerIndex) {
        renamed.name = layerIn.name;
        renamed.index = layerIndex;
        for (const auto& t : layerIn.tensors) {
            QuantizedTensor c;
            c.info = t.info;
            for (int p = 0; p < kQuantPartCount; ++p) {
                SLI_ASSIGN_OR_RETURN(c.parts[p], t.parts[p].clone());
            }
            renamed.tensors.push_back(std::move(c));
        }
        layer = &renamed;
    }
    io::LayerFileMeta meta{std::string(modelId), config.toJsonString(), options.sourceFingerprint};
    io::LayerWriteOptions wo;
    wo.compressStatistics = config.compressStatistics;
    wo.compressPayload = options.compressPayload;
    // The temporary file is private to this writer and the rename is atomic, so the write
    // itself needs no lock; the manifest's read-modify-write below does.
    Status st = io::writeLayerFile(path, *layer, meta, wo);
    if (!st.isOk()) return st.withContext("caching layer " + std::to_string(layerIndex) +
                                          " of model " + std::string(modelId));
    {
        SLI_ASSIGN_OR_RETURN(auto lock, io::FileLock::acquire(io::joinPath(dir, io::kLockName),
                                                              io::FileLock::Kind::kExclusive));
        auto manifest = io::readManifest(dir);
        io::CacheManifest m;
        if (manifest.isOk()) {
            m = std::move(*manifest);
        } else {
            m.modelId = std::string(modelId);
            m.configJson = config.toJsonString();
            m.configFingerprint = fingerprint(config, options.policyJson);
            m.policyJson = options.policyJson;
            m.source = options.source;
            m.sourceFingerprint = options.sourceFingerprint;
        }
        if (m.findLayer(layerIndex) == nullptr) {
            m.layers.push_back({layerIndex, layer->name, io::layerFileName(layerIndex),
                                static_cast<uint32_t>(layer->tensors.size())});
            std::sort(m.layers.begin(), m.layers.end(),
                      [](const auto& a, const auto& b) { return a.index < b.index; });
            SLI_RETURN_IF_ERROR(io::writeManifest(dir, m));
        }
    }
    auto size = io::fileSize(path);
    std::lock_guard<std::mutex> g(impl_->mu);
    impl_->dropMemoryLocked(path);
    impl_->touchDiskLocked(path, size.isOk() ? *size : 0);
    impl_->lastConfigDir[std::string(modelId)] = dir;
    ++impl_->stats.writes;
    return impl_->evictForSpaceLocked(path);
}

Result<QuantizedLayer> LayerCache::getLayer(std::string_view modelId, int64_t layerIndex) {
    std::vector<std::string> candidates;
    {
        std::lock_guard<std::mutex> g(impl_->mu);
        candidates = impl_->candidatesLocked(modelId, layerIndex);
    }
    for (const auto& c : candidates) {
        if (io::pathExists(c)) return impl_->load(c, modelId, layerIndex);
    }
    std::lock_guard<std::mutex> g(impl_->mu);
    ++impl_->stats.misses;
    return Status::notFound("layer " + std::to_string(layerIndex) + " of model " +
                            std::string(modelId) + " is not in the cache " + impl_->root);
}

Result<QuantizedLayer> LayerCache::getLayer(std::string_view modelId, int64_t layerIndex,
                                            const QuantizationConfig& config,
                                            std::string_view policyJson) {
    return impl_->load(layerPath(modelId, layerIndex, config, policyJson), modelId, layerIndex);
}

bool LayerCache::contains(std::string_view modelId, int64_t layerIndex) const {
    std::lock_guard<std::mutex> g(impl_->mu);
    for (const auto& c : impl_->candidatesLocked(modelId, layerIndex)) {
        if (io::pathExists(c)) return true;
    }
    return false;
}

bool LayerCache::contains(std::string_view modelId, int64_t layerIndex,
                          const QuantizationConfig& config, std::string_view policyJson) const {
    return io::pathExists(layerPath(modelId, layerIndex, config, policyJson));
}

Status LayerCache::evict(std::string_view modelId, int64_t layerIndex) {
    std::lock_guard<std::mutex> g(impl_->mu);
    for (const auto& c : impl_->candidatesLocked(modelId, layerIndex)) {
        if (!io::pathExists(c)) continue;
        SLI_ASSIGN_OR_RETURN(auto lock, io::FileLock::acquire(lockPathOf(c),
                                                              io::FileLock::Kind::kExclusive));
        SLI_RETURN_IF_ERROR(io::removeFile(c));
        impl_->forgetDiskLocked(c);
        impl_->dropMemoryLocked(c);
        ++impl_->stats.evictions;
    }
    return Status();
}

void LayerCache::clearMemory() {
    std::lock_guard<std::mutex> g(impl_->mu);
    while (!impl_->memLru.empty()) impl_->dropMemoryLocked(impl_->memLru.back());
}

LayerCacheStats LayerCache::stats() const {
    std::lock_guard<std::mutex> g(impl_->mu);
    LayerCacheStats s = impl_->stats;
    s.layersOnDisk = impl_->disk.size();
    s.bytesOnDisk = impl_->diskBytes;
    s.layersInMemory = impl_->memory.size();
    s.bytesInMemory = impl_->memBytes;
    return s;
}

}  // namespace sli
