#include "io/cache_manifest.h"

#include <signal.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>

#include "io/file.h"
#include "sli/json.h"
#include "sli/log.h"

namespace sli::io {

std::string CacheManifest::toJson() const {
    Json j = Json::object();
    j.set("format", Json::integer(kManifestVersion));
    j.set("model_id", Json::string(modelId));
    auto cfg = parseJson(configJson);
    j.set("config", cfg.isOk() ? std::move(*cfg) : Json::string(configJson));
    j.set("config_fingerprint", Json::string(configFingerprint));
    j.set("source", Json::string(source));
    j.set("source_fingerprint", Json::string(sourceFingerprint));
    if (!policyJson.empty()) {
        auto pol = parseJson(policyJson);
        j.set("policy", pol.isOk() ? std::move(*pol) : Json::string(policyJson));
    }
    if (!architecture.empty()) j.set("architecture", Json::string(architecture));
    Json arr = Json::array();
    for (const auto& l : layers) {
        Json e = Json::object();
        e.set("index", Json::integer(l.index));
        e.set("name", Json::string(l.name));
        e.set("file", Json::string(l.file));
        e.set("tensors", Json::integer(l.tensors));
        arr.push(std::move(e));
    }
    j.set("layers", std::move(arr));
    return j.dump() + "\n";
}

Result<CacheManifest> CacheManifest::parse(std::string_view text, std::string_view path) {
    auto bad = [&](const std::string& why) {
        return Status::corruption("cache manifest " + std::string(path) + ": " + why);
    };
    auto j = parseJson(text);
    if (!j.isOk()) return bad(j.status().message());
    if (!j->isObject()) return bad("not a JSON object");
    const Json* fmt = j->find("format");
    if (fmt == nullptr || fmt->asInt64() != std::optional<int64_t>(kManifestVersion)) {
        return Status::notSupported("cache manifest " + std::string(path) + ": unknown format");
    }
    CacheManifest m;
    auto str = [&](const char* key, std::string& out) -> bool {
        const Json* v = j->find(key);
        if (v == nullptr || !v->isString()) return false;
        out = v->asString();
        return true;
    };
    if (!str("model_id", m.modelId) || !str("config_fingerprint", m.configFingerprint) ||
        !str("source", m.source) || !str("source_fingerprint", m.sourceFingerprint)) {
        return bad("missing or non-string field");
    }
    const Json* cfg = j->find("config");
    if (cfg == nullptr) return bad("missing config");
    m.configJson = cfg->isString() ? cfg->asString() : cfg->dump();
    if (const Json* pol = j->find("policy"); pol != nullptr && !pol->isNull()) {
        if (!pol->isObject()) return bad("policy is not a JSON object");
        m.policyJson = pol->dump();
    }
    if (const Json* arch = j->find("architecture"); arch != nullptr && !arch->isNull()) {
        if (!arch->isString()) return bad("architecture is not a string");
        m.architecture = arch->asString();
    }
    const Json* layers = j->find("layers");
    if (layers == nullptr || !layers->isArray()) return bad("missing layers");
    for (const Json& e : layers->asArray()) {
        ManifestLayer l;
        const Json* idx = e.find("index");
        const Json* name = e.find("name");
        const Json* file = e.find("file");
        const Json* tensors = e.find("tensors");
        if (idx == nullptr || !idx->asInt64() || name == nullptr || !name->isString() ||
            file == nullptr || !file->isString() || tensors == nullptr || !tensors->asInt64()) {
            return bad("malformed layer entry");
        }
        l.index = *idx->asInt64();
        l.name = name->asString();
        l.file = file->asString();
        const int64_t nt = *tensors->asInt64();
        if (l.index < 0 || nt < 0 || nt > static_cast<int64_t>(UINT32_MAX)) {
            return bad("layer entry " + std::to_string(l.index) + " (" + l.name +
                       ") has a negative index or a tensor count out of range");
        }
        l.tensors = static_cast<uint32_t>(nt);
        if (l.file.find('/') != std::string::npos || l.file.empty() || l.file[0] == '.') {
            return bad("layer file name " + l.file + " is not a plain file name");
        }
        m.layers.push_back(std::move(l));
    }
    std::sort(m.layers.begin(), m.layers.end(),
              [](const auto& a, const auto& b) { return a.index < b.index; });
    for (size_t i = 1; i < m.layers.size(); ++i) {
        if (m.layers[i].index == m.layers[i - 1].index) {
            return bad("layer index " + std::to_string(m.layers[i].index) + " is listed twice (" +
                       m.layers[i - 1].name + ", " + m.layers[i].name + ")");
        }
    }
    return m;
}

const ManifestLayer* CacheManifest::findLayer(int64_t index) const {
    for (const auto& l : layers) {
        if (l.index == index) return &l;
    }
    return nullptr;
}

Status writeManifest(const std::string& dir, const CacheManifest& m) {
    const std::string text = m.toJson();
    return atomicWriteFile(joinPath(dir, kManifestName),
                           std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

Result<CacheManifest> readManifest(const std::string& dir) {
    const std::string path = joinPath(dir, kManifestName);
    SLI_ASSIGN_OR_RETURN(auto bytes, readWholeFile(path));
    return CacheManifest::parse(
        std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), path);
}

namespace {

bool safeIdByte(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.';
}

// The longest directory name most file systems take (NAME_MAX).
constexpr size_t kMaxDirName = 255;
// '@' and 16 hex digits.
constexpr size_t kHashSuffix = 17;

// True when the readable spelling below can be decoded back to the id: then no other id
// spells the same way, and the name is used as is (the folder of every cache written before
// the hash suffix existed).
bool plainModelId(std::string_view id) {
    if (id.empty() || id[0] == '.') return false;
    for (size_t i = 0; i < id.size(); ++i) {
        const char c = id[i];
        if (c == '/') {
            const bool dashBefore = i > 0 && id[i - 1] == '-';
            const bool dashAfter = i + 1 < id.size() && id[i + 1] == '-';
            if (dashBefore || dashAfter) return false;
        } else if (!safeIdByte(c)) {
            return false;
        } else if (c == '-' && i + 1 < id.size() && id[i + 1] == '-') {
            return false;
        }
    }
    return true;
}

}  // namespace

std::string modelDirName(std::string_view modelId) {
    std::string out;
    for (char c : modelId) {
        if (c == '/') {
            out += "--";
        } else if (safeIdByte(c)) {
            out += c;
        } else {
            out += '_';
        }
    }
    if (out.empty() || out[0] == '.') out.insert(out.begin(), '_');
    if (plainModelId(modelId) && out.size() <= kMaxDirName) return out;
    if (out.size() > kMaxDirName - kHashSuffix) out.resize(kMaxDirName - kHashSuffix);
    static constexpr char kHex[] = "0123456789abcdef";
    const uint64_t h = XXH3_64bits(modelId.data(), modelId.size());
    out += '@';
    for (int shift = 60; shift >= 0; shift -= 4) out += kHex[(h >> shift) & 0xf];
    return out;
}

std::string cacheDirFor(const std::string& root, std::string_view modelId,
                        std::string_view configFingerprint) {
    return joinPath(joinPath(root, modelDirName(modelId)), configFingerprint);
}

Result<std::vector<std::string>> findCacheDirs(const std::string& root) {
    if (!isDirectory(root)) return Status::notFound("cache directory " + root + " does not exist");
    std::vector<std::string> out;
    auto visit = [&](const std::string& d) {
        if (pathExists(joinPath(d, kManifestName))) out.push_back(d);
    };
    visit(root);
    auto l1 = listDirectory(root);
    if (!l1.isOk()) return l1.status();
    for (const auto& a : *l1) {
        const std::string da = joinPath(root, a);
        if (a[0] == '.' || !isDirectory(da)) continue;
        visit(da);
        auto l2 = listDirectory(da);
        if (!l2.isOk()) continue;
        for (const auto& b : *l2) {
            const std::string db = joinPath(da, b);
            if (b[0] != '.' && isDirectory(db)) visit(db);
        }
    }
    std::sort(out.begin(), out.end());
    return out;
}

void removeStaleTempFiles(const std::string& dir) {
    auto names = listDirectory(dir);
    if (!names.isOk()) return;
    for (const auto& n : *names) {
        int pid = 0;
        if (!isTempName(n, &pid)) continue;
        if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) {
            SLI_DEBUG("cache", "removing %s left by writer %d", n.c_str(), pid);
            (void)removeFile(joinPath(dir, n));
        }
    }
}

}  // namespace sli::io
