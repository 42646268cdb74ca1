#include "io/cache_manifest.h"

#include <doctest/doctest.h>

#include <set>
#include <string>
#include <vector>

#include "io/file.h"
#include "io_test_util.h"

using namespace sli;
using sli::testing::TempDir;

namespace {

// One path component a directory can be made under: not empty, ".", "..", no '/' or NUL, at
// most 255 bytes, and only bytes a portable file name uses.
void checkComponent(const std::string& name) {
    CAPTURE(name);
    REQUIRE_FALSE(name.empty());
    CHECK(name != ".");
    CHECK(name != "..");
    CHECK(name[0] != '.');
    CHECK(name.size() <= 255);
    for (char c : name) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == '@';
        CHECK_MESSAGE(ok, "byte " << static_cast<int>(static_cast<unsigned char>(c)));
    }
}

bool hashed(const std::string& name) {
    const size_t at = name.find('@');
    if (at == std::string::npos || name.size() - at != 17) return false;
    return name.find_first_not_of("0123456789abcdef", at + 1) == std::string::npos;
}

}  // namespace

TEST_CASE("plain model ids keep their readable folder name") {
    CHECK(io::modelDirName("org/model") == "org--model");
    CHECK(io::modelDirName("meta-llama/Llama-2-7b-hf") == "meta-llama--Llama-2-7b-hf");
    CHECK(io::modelDirName("TheBloke/x.y-GGUF") == "TheBloke--x.y-GGUF");
    CHECK(io::modelDirName("gpt2") == "gpt2");
    CHECK(io::modelDirName("a_b") == "a_b");
    CHECK(io::modelDirName("a/b/c") == "a--b--c");
    CHECK(io::modelDirName("a//b") == "a----b");
    CHECK(io::modelDirName("_x") == "_x");
}

TEST_CASE("model ids that spelled the same folder before now map to different folders") {
    const std::vector<std::pair<std::string, std::string>> pairs = {
        {"a/b", "a--b"}, {"a b", "a_b"},  {"a-/b", "a/-b"},  {"a/b", "a/-b"},
        {".x", "_.x"},   {"", "_"},       {"a\xc3\xa9", "a__"}, {"a--b", "a-/b"},
        {"x/y", "x/-y"}, {"q-/-r", "q/--/r"},
    };
    for (const auto& [a, b] : pairs) {
        CAPTURE(a);
        CAPTURE(b);
        const std::string da = io::modelDirName(a), db = io::modelDirName(b);
        CHECK(da != db);
        CHECK(io::cacheDirFor("/root", a, "fp") != io::cacheDirFor("/root", b, "fp"));
        checkComponent(da);
        checkComponent(db);
    }
    // The hash is of the exact id bytes; the readable part stays in front of it.
    const std::string d = io::modelDirName("a--b");
    CHECK(d.rfind("a--b@", 0) == 0);
    CHECK(hashed(d));
    CHECK(io::modelDirName("a--b") == d);  // stable
    CHECK(hashed(io::modelDirName("a b")));
    CHECK(io::modelDirName("a b").rfind("a_b@", 0) == 0);
}

TEST_CASE("odd and long model ids give one valid path component") {
    const std::vector<std::string> ids = {
        "",
        ".",
        "..",
        ".hidden/model",
        "../../etc/passwd",
        "with space/and\ttab",
        "caf\xc3\xa9/\xe5\xb1\x82\xf0\x9f\x98\x80",
        std::string("nul\0byte", 8),
        "a@b",
        std::string(300, 'x'),
        std::string(130, 'y') + "/" + std::string(130, 'z'),  // plain, but 262 bytes
        std::string(400, '/'),
        std::string(300, '\xff'),
    };
    std::set<std::string> seen;
    for (const auto& id : ids) {
        const std::string d = io::modelDirName(id);
        checkComponent(d);
        CHECK(hashed(d));  // none of these is plain
        CHECK(seen.insert(d).second);
    }
    // A plain id whose name fits keeps it even when long; one that cannot fit is hashed.
    const std::string fits = std::string(200, 'm');
    CHECK(io::modelDirName(fits) == fits);
    CHECK(io::modelDirName(std::string(300, 'x')).size() == 255);
    CHECK(io::modelDirName(std::string(300, 'x')) != io::modelDirName(std::string(301, 'x')));
}

TEST_CASE("directories for colliding-before ids can both be created under one root") {
    TempDir dir;
    const std::vector<std::string> ids = {"a/b", "a--b", "a b", "a_b", "a-/b", "a/-b", ".x", "_.x"};
    std::set<std::string> dirs;
    for (const auto& id : ids) {
        const std::string d = io::cacheDirFor(dir.path(), id, "0123456789abcdef");
        CHECK(dirs.insert(d).second);
        REQUIRE(io::makeDirs(d).isOk());
        CHECK(io::isDirectory(d));
    }
}
