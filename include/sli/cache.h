// LayerCache: the on-disk (plus optional in-memory) cache of quantized layers, the seed's
// LayerCache(cache_dir, max_cache_size_gb, max_memory_cache_size_gb).
//
// Layout: ROOT/<model>/<config fingerprint>/layer-NNNNN.slc with a MANIFEST.json per
// directory (docs/cache-format.md). cacheLayer() writes a layer atomically (temporary file,
// fsync, rename, directory fsync), adds it to the manifest, then evicts least-recently-used
// layer files while the cache's total size exceeds maxCacheSizeGb (0 = unlimited; the layer
// just written is never evicted). getLayer() reads and verifies a layer (xxh3 of every extent)
// and returns an owned copy; a damaged file is Corruption naming the file, layer and tensor,
// never wrong data. The memory tier keeps the file bytes of recently used layers in RAM up to
// maxMemoryCacheSizeGb (0 = off); a hit is still verified, and an entry whose file changed
// on disk (inode, size or mtime) is dropped.
//
// Which configuration: the two-argument getLayer() / contains() look at the configuration
// this object last wrote or read for that model, else at every configuration directory of the
// model (the newest file wins). Pass a QuantizationConfig to pin one, plus the policy JSON of
// a cache made with a per-tensor policy beyond the config (the adaptive "mixed" preset, or
// ingestion without default skips; see engine/ingest.h ingestPolicyJson): the directory is
// named by fingerprint(config, policyJson), which is config.fingerprint() when there is none.
//
// Concurrency: a LayerCache is thread-safe (one internal mutex; file I/O for different layers
// may overlap). Across processes, writers take an exclusive flock on the directory's LOCK
// file for the rename / manifest update / eviction, readers a shared one while opening; two
// writers of the same layer each publish a complete file (the last rename wins). Sizes and
// recency are tracked per process: another process's writes are seen when files are opened.
//
// Errors: Status (NotFound for an absent layer, Corruption, IOError, ResourceExhausted for a
// full disk) naming the model, layer and file.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sli/config.h"
#include "sli/quantized.h"
#include "sli/status.h"

namespace sli {

struct LayerCacheStats {
    uint64_t memoryHits = 0;   // getLayer served from the memory tier
    uint64_t diskHits = 0;     // getLayer read from disk
    uint64_t misses = 0;       // getLayer of an absent layer
    uint64_t corruptions = 0;  // getLayer refused damaged data
    uint64_t writes = 0;
    uint64_t evictions = 0;
    uint64_t layersOnDisk = 0;
    uint64_t bytesOnDisk = 0;
    uint64_t layersInMemory = 0;
    uint64_t bytesInMemory = 0;
};

struct CacheWriteOptions {
    bool compressPayload = false;  // zstd payloads too (statistics follow config.compressStatistics)
    std::string sourceFingerprint;  // recorded in the file and manifest
    std::string source;             // recorded in a new manifest
    // A per-tensor policy beyond the config (JSON object text; empty: none). Folded into the
    // directory's fingerprint and recorded in a new manifest.
    std::string policyJson;
};

class LayerCache {
public:
    // Creates `cacheDir` if needed and indexes the layer files already there. Sizes in GB
    // (1e9 bytes); 0 = unlimited disk / no memory tier.
    static Result<std::unique_ptr<LayerCache>> open(std::string cacheDir,
                                                    double maxCacheSizeGb = 0,
                                                    double maxMemoryCacheSizeGb = 0);
    ~LayerCache();
    LayerCache(const LayerCache&) = delete;
    LayerCache& operator=(const LayerCache&) = delete;

    // The seed's cache_layer: the configuration is the default one with `mode`.
    Status cacheLayer(std::string_view modelId, int64_t layerIndex, const QuantizedLayer& layer,
                      QuantizationMode mode);
    Status cacheLayer(std::string_view modelId, int64_t layerIndex, const QuantizedLayer& layer,
                      const QuantizationConfig& config, const CacheWriteOptions& options = {});
    Result<QuantizedLayer> getLayer(std::string_view modelId, int64_t layerIndex);
    Result<QuantizedLayer> getLayer(std::string_view modelId, int64_t layerIndex,
                                    const QuantizationConfig& config,
                                    std::string_view policyJson = {});
    bool contains(std::string_view modelId, int64_t layerIndex) const;
    bool contains(std::string_view modelId, int64_t layerIndex, const QuantizationConfig& config,
                  std::string_view policyJson = {}) const;
    // Removes the layer's file(s) (every configuration) and memory copy. OK when absent.
    Status evict(std::string_view modelId, int64_t layerIndex);
    // Drops the memory tier.
    void clearMemory();
    LayerCacheStats stats() const;

    const std::string& root() const noexcept;
    // ROOT/<model>/<fingerprint(config, policyJson)> and the file of a layer in it.
    std::string directoryFor(std::string_view modelId, const QuantizationConfig& config,
                             std::string_view policyJson = {}) const;
    std::string layerPath(std::string_view modelId, int64_t layerIndex,
                          const QuantizationConfig& config, std::string_view policyJson = {}) const;
    // The name of a configuration's directory: config.fingerprint() without a policy, else
    // 16 hex digits of FNV-1a 64 over the config JSON, a newline and the policy JSON.
    static std::string fingerprint(const QuantizationConfig& config,
                                   std::string_view policyJson = {});
    // The default configuration cacheLayer(mode) uses.
    static QuantizationConfig configForMode(QuantizationMode mode);

private:
    struct Impl;
    explicit LayerCache(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace sli
