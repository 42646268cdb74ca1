// Layer-cache directory layout and its manifest.
//
// A cache root (what `sli quantize --cache ROOT` is given) holds one directory per model and
// configuration:   ROOT/<model dir>/<config fingerprint>/
//                      MANIFEST.json       the expected layers (written before any layer)
//                      LOCK                flock target (shared: readers, exclusive: writers)
//                      layer-00000.slc ... one file per layer (docs/cache-format.md)
// <model dir> is modelDirName(model id), one path component, distinct for distinct ids: the
// id with "/" spelled "--", other bytes outside [A-Za-z0-9._-] as "_", and a "_" put before an
// empty or '.'-led result. That spelling is the whole name for a *plain* id — non-empty, not
// '.'-led, only [A-Za-z0-9._-] and '/', no "--", no '/' next to a '-', and a name of at most
// 255 bytes — since it decodes back to the id ("org/model" -> "org--model"); every other id
// ("a--b", "a b", "a-/b") gets the spelling, cut to 238 bytes, then '@' and 16 lowercase hex
// digits of XXH3-64 of the id's bytes ("a--b@…"). '@' never occurs in a plain name. The
// manifest is JSON: {"format": 1, "model_id", "config" (QuantizationConfig JSON),
// "config_fingerprint", "source", "source_fingerprint", ["policy",] ["architecture",]
// "layers": [{"index", "name", "file", "tensors"}]}. "policy" (optional) is the JSON object
// of a per-tensor policy beyond the config (the adaptive "mixed" preset, default skips off);
// when present, <config fingerprint> is LayerCache::fingerprint(config, policy), so such a
// cache never shares a directory with a plain one. "architecture" (optional) is the model
// family the architecture registry detected. A layer listed but absent is *missing* (never
// written, interrupted, or evicted), not corrupt.
//
// Blocking: file I/O. Thread safety: functions are reentrant; concurrent writers of one
// manifest must hold the directory's exclusive LOCK. Errors: Status naming the path.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sli/status.h"

namespace sli::io {

inline constexpr const char* kManifestName = "MANIFEST.json";
inline constexpr const char* kLockName = "LOCK";
inline constexpr uint32_t kManifestVersion = 1;

struct ManifestLayer {
    int64_t index = -1;
    std::string name;
    std::string file;  // relative to the cache directory
    uint32_t tensors = 0;
};

struct CacheManifest {
    std::string modelId;
    std::string configJson;
    std::string configFingerprint;
    std::string source;
    std::string sourceFingerprint;
    std::string policyJson;    // empty: every tensor follows the config alone
    std::string architecture;  // e.g. "llama"; empty when not recorded
    std::vector<ManifestLayer> layers;  // sorted by index

    std::string toJson() const;
    static Result<CacheManifest> parse(std::string_view text, std::string_view path);
    const ManifestLayer* findLayer(int64_t index) const;
};

// Atomic replace of DIR/MANIFEST.json.
Status writeManifest(const std::string& dir, const CacheManifest& m);
Result<CacheManifest> readManifest(const std::string& dir);

std::string modelDirName(std::string_view modelId);
std::string cacheDirFor(const std::string& root, std::string_view modelId,
                        std::string_view configFingerprint);
// Every directory holding a MANIFEST.json at ROOT, ROOT/*, or ROOT/*/* (sorted).
Result<std::vector<std::string>> findCacheDirs(const std::string& root);
// Removes temporary files left in `dir` by writers that no longer run.
void removeStaleTempFiles(const std::string& dir);

}  // namespace sli::io
