#include "io/file.h"

#include <doctest/doctest.h>
#include <fcntl.h>

#include "io/mapped_file.h"
#include "io_test_util.h"

using namespace sli;
using sli::testing::TempDir;

TEST_CASE("atomic writes replace a file whole and leave no temporary behind") {
    TempDir dir;
    const std::string path = dir.file("f.bin");
    std::vector<uint8_t> a(10000, 1), b(5, 2);
    REQUIRE(io::atomicWriteFile(path, a).isOk());
    REQUIRE(io::atomicWriteFile(path, b).isOk());
    auto back = io::readWholeFile(path);
    REQUIRE(back.isOk());
    CHECK(*back == b);
    CHECK(io::listDirectory(dir.path())->size() == 1);
}

TEST_CASE("a failing writer leaves the old file untouched") {
    TempDir dir;
    const std::string path = dir.file("f.bin");
    std::vector<uint8_t> a(100, 1);
    REQUIRE(io::atomicWriteFile(path, a).isOk());
    Status st = io::atomicWriteFile(path, [](int, const std::string&) {
        return Status::ioError("injected");
    });
    CHECK(st.isIOError());
    CHECK(*io::readWholeFile(path) == a);
    CHECK(io::listDirectory(dir.path())->size() == 1);
}

TEST_CASE("preadAll reports a truncated read as Corruption naming the file") {
    TempDir dir;
    const std::string path = dir.file("short");
    std::vector<uint8_t> a(10, 3);
    REQUIRE(io::atomicWriteFile(path, a).isOk());
    auto fd = io::openFile(path, O_RDONLY);
    REQUIRE(fd.isOk());
    std::vector<uint8_t> out(20);
    Status st = io::preadAll(fd->get(), out, 0, path);
    CHECK(st.isCorruption());
    CHECK(st.message().find(path) != std::string::npos);
}

TEST_CASE("opening a missing file is NotFound naming it") {
    auto r = io::openFile("/nonexistent/dir/x", O_RDONLY);
    CHECK(r.status().isNotFound());
    CHECK(r.status().message().find("/nonexistent/dir/x") != std::string::npos);
    auto m = io::MappedFile::open("/nonexistent/dir/x");
    CHECK_FALSE(m.isOk());
}

TEST_CASE("a memory map exposes the file's bytes; an empty file maps to nothing") {
    TempDir dir;
    std::vector<uint8_t> a = {9, 8, 7, 6, 5};
    REQUIRE(io::atomicWriteFile(dir.file("m"), a).isOk());
    auto m = io::MappedFile::open(dir.file("m"));
    REQUIRE(m.isOk());
    REQUIRE(m->size() == 5);
    CHECK(std::vector<uint8_t>(m->bytes().begin(), m->bytes().end()) == a);
    REQUIRE(io::atomicWriteFile(dir.file("e"), std::vector<uint8_t>{}).isOk());
    auto e = io::MappedFile::open(dir.file("e"));
    REQUIRE(e.isOk());
    CHECK(e->size() == 0);
}

TEST_CASE("temporary names are recognized with their writer's pid") {
    const std::string t = io::tempPathFor("/x/y/layer-00001.slc");
    int pid = 0;
    CHECK(io::isTempName(io::baseName(t), &pid));
    CHECK(pid == ::getpid());
    CHECK_FALSE(io::isTempName("layer-00001.slc"));
    CHECK(io::dirName(t) == "/x/y");
}

TEST_CASE("makeDirs creates nested directories and tolerates existing ones") {
    TempDir dir;
    const std::string d = dir.file("a/b/c");
    REQUIRE(io::makeDirs(d).isOk());
    REQUIRE(io::makeDirs(d).isOk());
    CHECK(io::isDirectory(d));
}

TEST_CASE("shared file locks coexist") {
    TempDir dir;
    auto a = io::FileLock::acquire(dir.file("LOCK"), io::FileLock::Kind::kShared);
    auto b = io::FileLock::acquire(dir.file("LOCK"), io::FileLock::Kind::kShared);
    CHECK(a.isOk());
    CHECK(b.isOk());
    CHECK(a->held());
}
